"""Resizing of [B, C, H, W] tensors the way ComfyUI's nodes do it (comfy.utils.common_upscale):
torch interpolation modes, plus 'bislerp' (spherical interpolation of channel vectors, for
latents) and 'lanczos' (through Pillow), with an optional centre crop to the new aspect."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def _slerp(b1: torch.Tensor, b2: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of flat [N, C] batches; norms interpolated linearly."""
    c = b1.shape[-1]
    n1 = torch.norm(b1, dim=-1, keepdim=True)
    n2 = torch.norm(b2, dim=-1, keepdim=True)
    u1, u2 = b1 / n1, b2 / n2
    u1[n1.expand(-1, c) == 0.0] = 0.0
    u2[n2.expand(-1, c) == 0.0] = 0.0
    dot = (u1 * u2).sum(1)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    res = (torch.sin((1.0 - r.squeeze(1)) * omega) / so).unsqueeze(1) * u1 \
        + (torch.sin(r.squeeze(1) * omega) / so).unsqueeze(1) * u2
    res *= (n1 * (1.0 - r) + n2 * r).expand(-1, c)
    same, opposite = dot > 1 - 1e-5, dot < 1e-5 - 1
    res[same] = b1[same]
    res[opposite] = (b1 * (1.0 - r) + b2 * r)[opposite]
    return res


def _bilinear_taps(old: int, new: int, device):
    coords = torch.arange(old, dtype=torch.float32, device=device).reshape((1, 1, 1, -1))
    coords = torch.nn.functional.interpolate(coords, size=(1, new), mode="bilinear")
    ratios = coords - coords.floor()
    first = coords.to(torch.int64)
    nxt = torch.arange(old, dtype=torch.float32, device=device).reshape((1, 1, 1, -1)) + 1
    nxt[:, :, :, -1] -= 1
    second = torch.nn.functional.interpolate(nxt, size=(1, new), mode="bilinear").to(torch.int64)
    return ratios, first, second


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    dtype = samples.dtype
    samples = samples.float()
    n, c, h, w = samples.shape
    ratios, i1, i2 = _bilinear_taps(w, width, samples.device)
    a = samples.gather(-1, i1.expand((n, c, h, -1))).movedim(1, -1).reshape((-1, c))
    b = samples.gather(-1, i2.expand((n, c, h, -1))).movedim(1, -1).reshape((-1, c))
    r = ratios.expand((n, 1, h, -1)).movedim(1, -1).reshape((-1, 1))
    result = _slerp(a, b, r).reshape(n, h, width, c).movedim(-1, 1)
    ratios, i1, i2 = _bilinear_taps(h, height, samples.device)
    i1 = i1.reshape((1, 1, -1, 1)).expand((n, c, -1, width))
    i2 = i2.reshape((1, 1, -1, 1)).expand((n, c, -1, width))
    r = ratios.reshape((1, 1, -1, 1)).expand((n, 1, -1, width)).movedim(1, -1).reshape((-1, 1))
    a = result.gather(-2, i1).movedim(1, -1).reshape((-1, c))
    b = result.gather(-2, i2).movedim(1, -1).reshape((-1, c))
    return _slerp(a, b, r).reshape(n, height, width, c).movedim(-1, 1).to(dtype)


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    out = []
    for image in samples:
        pil = Image.fromarray(np.clip(255.0 * image.movedim(0, -1).cpu().numpy(), 0, 255).astype(np.uint8))
        pil = pil.resize((width, height), resample=Image.Resampling.LANCZOS)
        out.append(torch.from_numpy(np.array(pil).astype(np.float32) / 255.0).movedim(-1, 0))
    return torch.stack(out).to(samples.device, samples.dtype)


def center_crop_to_aspect(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    old_w, old_h = samples.shape[-1], samples.shape[-2]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return samples.narrow(-2, y, old_h - y * 2).narrow(-1, x, old_w - x * 2)


def common_upscale(samples: torch.Tensor, width: int, height: int, upscale_method: str, crop: str) -> torch.Tensor:
    """Resize to (height, width). upscale_method: nearest-exact, bilinear, area, bicubic, bislerp,
    lanczos; crop: 'center' or anything else for none. Extra leading dims are folded.
    (Parameter names are ComfyUI's: custom packs pass them by keyword.)"""
    method = upscale_method
    shape = tuple(samples.shape)
    if len(shape) > 4:
        samples = samples.reshape(shape[0], shape[1], -1, shape[-2], shape[-1]).movedim(2, 1)
        samples = samples.reshape(-1, shape[1], shape[-2], shape[-1])
    s = center_crop_to_aspect(samples, width, height) if crop == "center" else samples
    if method == "bislerp":
        out = bislerp(s, width, height)
    elif method == "lanczos":
        out = lanczos(s, width, height)
    else:
        out = torch.nn.functional.interpolate(s, size=(height, width), mode=method)
    if len(shape) == 4:
        return out
    out = out.reshape((shape[0], -1, shape[1]) + (height, width))
    return out.movedim(2, 1).reshape(shape[:-2] + (height, width))
