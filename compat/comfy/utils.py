"""`comfy.utils` for custom node packs: progress bars, file loading, image helpers."""
from __future__ import annotations

import torch

from models import progress as _progress
from models.progress import ProgressBar as _ProgressBar
from models.progress import report_progress
from models.resize import bislerp, common_upscale, lanczos  # noqa: F401
from models.sampling.conds import repeat_to_batch_size, reshape_mask  # noqa: F401
from models.tiling import tiled_scale  # noqa: F401
from models.tiling import tile_count as get_tiled_scale_steps  # noqa: F401

PROGRESS_BAR_ENABLED = True


def set_progress_bar_enabled(enabled: bool) -> None:
    global PROGRESS_BAR_ENABLED
    PROGRESS_BAR_ENABLED = enabled


def set_progress_bar_global_hook(hook) -> None:
    """hook(value, total, preview, node_id): replaces the hook every ProgressBar reports to
    (the server's, which sends `progress` events), as in ComfyUI."""
    _progress.set_progress_hook(hook)


def __getattr__(name):
    if name == "PROGRESS_BAR_HOOK":
        return _progress.get_progress_hook()
    raise AttributeError(name)


class ProgressBar(_ProgressBar):
    """ProgressBar(total, node_id=None): update(n) / update_absolute(value, total, preview)."""

    def __init__(self, total, node_id=None):
        super().__init__(total, node_id)


def load_torch_file(path: str, safe_load: bool = True, device=None, return_metadata: bool = False):
    """A state dict from .safetensors (memory-mapped) or pickled files (weights only)."""
    device = torch.device("cpu") if device is None else device
    metadata = None
    if path.lower().endswith((".safetensors", ".sft")):
        from safetensors import safe_open
        sd = {}
        with safe_open(path, framework="pt", device=str(device)) as f:
            for k in f.keys():
                sd[k] = f.get_tensor(k)
            metadata = f.metadata()
    else:
        sd = torch.load(path, map_location=device, weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
    return (sd, metadata) if return_metadata else sd


def save_torch_file(sd, path: str, metadata=None) -> None:
    from safetensors.torch import save_file
    save_file(sd, path, metadata=metadata)


def state_dict_prefix_replace(state_dict, replace_prefix, filter_keys=False):
    out = {} if filter_keys else state_dict
    for old, new in replace_prefix.items():
        for k in [k for k in state_dict if k.startswith(old)]:
            out[new + k[len(old):]] = state_dict.pop(k)
    return out


def report(value, total, preview=None):
    report_progress(value, total, preview)


def state_dict_key_replace(state_dict, keys_to_replace):
    for old, new in keys_to_replace.items():
        if old in state_dict:
            state_dict[new] = state_dict.pop(old)
    return state_dict


def calculate_parameters(sd, prefix=""):
    return sum(v.nelement() for k, v in sd.items() if k.startswith(prefix))


def weight_dtype(sd, prefix=""):
    """The most common dtype among the weights under `prefix` (None when there are none)."""
    counts = {}
    for k, v in sd.items():
        if k.startswith(prefix):
            counts[v.dtype] = counts.get(v.dtype, 0) + v.nelement()
    return max(counts, key=counts.get) if counts else None


def get_attr(obj, attr: str):
    """obj.a.b.c for attr "a.b.c"."""
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


def set_attr(obj, attr: str, value):
    """Set obj.a.b.c; returns the previous value."""
    *path, last = attr.split(".")
    owner = get_attr(obj, ".".join(path)) if path else obj
    previous = getattr(owner, last)
    setattr(owner, last, value)
    return previous


def set_attr_param(obj, attr: str, value):
    return set_attr(obj, attr, torch.nn.Parameter(value, requires_grad=False))


def copy_to_param(obj, attr: str, value):
    """In-place copy into an existing parameter (keeps its storage)."""
    get_attr(obj, attr).data.copy_(value)
