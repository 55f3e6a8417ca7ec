"""Image upscale models (ESRGAN, Real-ESRGAN, Real-ESRGAN Compact, SwinIR, HAT, DAT, OmniSR,
SPAN, ...) loaded through the `spandrel` library, which detects the architecture from the
state dict, and run tile by tile as ComfyUI's ImageUpscaleWithModel does.

spandrel declares torchvision as a dependency, but only two architectures use it, for two
small functions (RestoreFormer: `normalize`; LaMa, an inpainting model the upscale nodes
refuse anyway: `rotate`). torchvision wheels are built against one torch release and pull a
CUDA torch when installed, so comfyd installs spandrel with `--no-deps` and, when no working
torchvision is importable, gives spandrel's import a stand-in for those two functions. The
stand-in lives in sys.modules only while spandrel is imported: code that imports
torchvision later sees the real package or its absence, never the stand-in.
"""
from __future__ import annotations

import contextlib
import os
import sys
import types

import torch

from models import devices, memory
from models.progress import ProgressBar
from models.state_dict import ModelFileError, load_state_dict
from models.tiling import tile_count, tiled_scale

INSTALL_HINT = "pip install --no-deps spandrel==0.4.2 einops"
TILE = 512
OVERLAP = 32
MIN_TILE = 128  # the tile is halved on out-of-memory errors down to this size, as ComfyUI


class UpscaleModelError(ValueError):
    """A file that is not a (single-image) upscale model, or spandrel missing."""


def _tv_normalize(tensor: torch.Tensor, mean, std, inplace: bool = False) -> torch.Tensor:
    # torchvision.transforms.functional.normalize for [..., C, H, W] tensors
    mean = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    if inplace:
        return tensor.sub_(mean).div_(std)
    return (tensor - mean) / std


def _tv_rotate(*args, **kwargs):
    raise UpscaleModelError("this architecture (LaMa) needs torchvision, which comfyd does not install")


def _stand_in_modules() -> dict[str, types.ModuleType]:
    import enum

    class InterpolationMode(enum.Enum):
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    functional = types.ModuleType("torchvision.transforms.functional")
    functional.normalize = _tv_normalize
    functional.rotate = _tv_rotate
    functional.InterpolationMode = InterpolationMode
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional
    root = types.ModuleType("torchvision")
    root.transforms = transforms
    return {"torchvision": root, "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional}


@contextlib.contextmanager
def _torchvision_for_import():
    """Make `from torchvision.transforms.functional import ...` work for the duration of
    spandrel's import when the real torchvision is missing or broken."""
    try:
        import torchvision.transforms.functional  # noqa: F401
        yield
        return
    except Exception:  # missing, or built for another torch ("operator torchvision::nms does not exist")
        pass
    saved = {k: v for k, v in sys.modules.items() if k == "torchvision" or k.startswith("torchvision.")}
    for k in saved:
        del sys.modules[k]
    stand_in = _stand_in_modules()
    sys.modules.update(stand_in)
    try:
        yield
    finally:
        for k, mod in stand_in.items():
            if sys.modules.get(k) is mod:
                del sys.modules[k]
        sys.modules.update(saved)


_spandrel = None


def spandrel_module():
    """The spandrel package (imported once), or a clear error when it is not installed."""
    global _spandrel
    if _spandrel is None:
        with _torchvision_for_import():
            try:
                import spandrel
            except ModuleNotFoundError as e:
                raise UpscaleModelError(f"upscale models need the spandrel package ({INSTALL_HINT}): {e}") from e
        try:  # the non-commercial architectures, when their package is installed (as ComfyUI)
            with _torchvision_for_import():
                from spandrel_extra_arches import EXTRA_REGISTRY
            spandrel.MAIN_REGISTRY.add(*EXTRA_REGISTRY)
        except Exception:
            pass
        _spandrel = spandrel
    return _spandrel


def load_upscale_model_from_state_dict(sd: dict[str, torch.Tensor], name: str = "state dict"):
    """An eval-mode spandrel ImageModelDescriptor for a state dict (architecture detected)."""
    spandrel = spandrel_module()
    if "module.layers.0.residual_group.blocks.0.norm1.weight" in sd:  # SwinIR saved from DataParallel
        sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(sd)
    except spandrel.UnsupportedModelError as e:
        raise UpscaleModelError(f"{name} is not an upscale model of any architecture spandrel knows") from e
    except (KeyError, RuntimeError, ValueError, AssertionError) as e:
        raise UpscaleModelError(f"{name} could not be loaded as an upscale model: {type(e).__name__}: {e}") from e
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UpscaleModelError("Upscale model must be a single-image model.")
    return descriptor.eval()


def load_upscale_model(path: str):
    try:
        sd = load_state_dict(path)
    except ModelFileError as e:
        raise UpscaleModelError(str(e)) from e
    return load_upscale_model_from_state_dict(sd, os.path.basename(path))


def memory_unit(descriptor) -> "memory.Unit":
    """The memory manager's view of an upscale model: it runs on the compute device and stays
    there while it fits (the same Unit every call, as its module is the same)."""
    name = getattr(getattr(descriptor, "architecture", None), "name", "model")
    return memory.Unit(f"upscale:{name}", [descriptor.model], devices.compute_device().torch_device, devices.offload_device())


def working_memory(descriptor, image: torch.Tensor, tile: int) -> float:
    """ComfyUI's estimate for one tile pass: the tile's activations grow with the scale."""
    return tile * tile * 3 * image.element_size() * max(descriptor.scale, 1.0) * 384.0 + \
        image.nelement() * image.element_size()


def upscale_image(descriptor, image: torch.Tensor, tile: int = TILE, overlap: int = OVERLAP,
                  device=None, min_tile: int = MIN_TILE) -> torch.Tensor:
    """IMAGE [B,H,W,C] -> IMAGE [B,H*s,W*s,C'] clamped to 0..1, computed in tiles of `tile`
    pixels overlapping by `overlap`; an out-of-memory error halves the tile (not below
    `min_tile`) and starts again. The memory manager places the model on the compute device
    (and keeps it there while it fits); an explicit `device` runs it there and puts it back."""
    if device is None:
        memory.load_models([memory_unit(descriptor)], working_memory(descriptor, image, tile))
        device = next(descriptor.model.parameters()).device
        restore = None
    else:
        device = torch.device(device)
        model = getattr(descriptor, "model", None)
        restore = next(model.parameters()).device if model is not None else torch.device("cpu")
        descriptor.to(device)
    pixels = image.movedim(-1, -3).to(device)
    try:
        while True:
            try:
                steps = pixels.shape[0] * tile_count(pixels.shape[3], pixels.shape[2], tile, tile, overlap)
                out = tiled_scale(pixels, lambda part: descriptor(part), tile_x=tile, tile_y=tile,
                                  overlap=overlap, upscale_amount=descriptor.scale,
                                  out_channels=descriptor.output_channels, pbar=ProgressBar(steps))
                break
            except torch.OutOfMemoryError:
                tile //= 2
                if tile < min_tile:
                    raise
                memory.soft_empty_cache()
    finally:
        if restore is not None:
            descriptor.to(restore)
    out = out.to(devices.intermediate_device())
    return torch.clamp(out.movedim(-3, -1), min=0.0, max=1.0)
