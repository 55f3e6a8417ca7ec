"""Pixel helpers shared by the image and mask nodes (and by `comfy.utils` / `node_helpers` in compat).

IMAGE tensors are [B,H,W,C] float in 0..1 and MASK tensors [B,H,W]; the torch resize functions
want channels first, so the wrappers here move the channel axis around `common_upscale`.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from models.resize import bislerp, common_upscale, lanczos  # noqa: F401  (re-exported for nodes)

UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CROP_METHODS = ["disabled", "center"]


def resize_image(image: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """IMAGE [B,H,W,C] resized to height x width through common_upscale."""
    return common_upscale(image.movedim(-1, 1), width, height, method, crop).movedim(1, -1)


def resize_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """MASK ([H,W] or [B,H,W]) resized bilinearly to [B,height,width]."""
    flat = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
    return torch.nn.functional.interpolate(flat, size=(height, width), mode="bilinear").squeeze(1)


def image_alpha_fix(destination: torch.Tensor, source: torch.Tensor):
    """Make an RGB and an RGBA image combinable: the source loses a surplus alpha, or the
    destination gains an opaque one."""
    if destination.shape[-1] < source.shape[-1]:
        source = source[..., :destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        destination = torch.nn.functional.pad(destination, (0, 1))
        destination[..., -1] = 1.0
    return destination, source


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """One [H,W,C] image to an 8-bit Pillow image (values clipped, then truncated as ComfyUI does)."""
    return Image.fromarray(np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8))


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """A Pillow image to a [1,H,W,C] float tensor in 0..1."""
    return torch.from_numpy(np.array(image).astype(np.float32) / 255.0)[None,]


def mask_to_image(mask: torch.Tensor) -> torch.Tensor:
    """MASK to a grey 3-channel IMAGE (a view, not a copy)."""
    return mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3)


def gaussian_kernel(kernel_size: int, sigma: float, device=None) -> torch.Tensor:
    """A normalised 2-D Gaussian sampled on a [-1, 1] grid of kernel_size points per side
    (so sigma is relative to the radius, as in ComfyUI's blur and sharpen)."""
    axis = torch.linspace(-1, 1, kernel_size, device=device)
    x, y = torch.meshgrid(axis, axis, indexing="ij")
    dist = torch.sqrt(x * x + y * y)
    g = torch.exp(-(dist * dist) / (2.0 * sigma * sigma))
    return g / g.sum()


def filter_with_kernel(image: torch.Tensor, kernel: torch.Tensor, radius: int) -> torch.Tensor:
    """Convolve each channel of IMAGE [B,H,W,C] with a square kernel, reflect-padding the edges
    by `radius` (plus the conv's own zero padding, cropped away again)."""
    channels = image.shape[-1]
    weights = kernel.repeat(channels, 1, 1).unsqueeze(1)
    x = torch.nn.functional.pad(image.permute(0, 3, 1, 2), (radius, radius, radius, radius), "reflect")
    out = torch.nn.functional.conv2d(x, weights, padding=kernel.shape[-1] // 2, groups=channels)
    return out[:, :, radius:-radius, radius:-radius].permute(0, 2, 3, 1)
