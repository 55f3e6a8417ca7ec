"""`comfy.utils` for custom node packs: progress bars, file loading, image helpers."""
from __future__ import annotations

import torch

from models.progress import ProgressBar as _ProgressBar
from models.progress import report_progress
from models.resize import bislerp, common_upscale, lanczos  # noqa: F401
from models.sampling.conds import repeat_to_batch_size  # noqa: F401

PROGRESS_BAR_ENABLED = True
_global_hook = {"hook": None}


def set_progress_bar_enabled(enabled: bool) -> None:
    global PROGRESS_BAR_ENABLED
    PROGRESS_BAR_ENABLED = enabled


def set_progress_bar_global_hook(hook) -> None:
    _global_hook["hook"] = hook


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
