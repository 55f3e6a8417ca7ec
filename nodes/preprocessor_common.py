"""Image plumbing shared by the ControlNet preprocessor nodes (the comfyui_controlnet_aux pack's
conventions, which users' hint images depend on):

- each batch item is turned into uint8 HWC (x*255 truncated, as `np.asarray(..., np.uint8)`),
- resized so its short side equals `resolution` (INTER_AREA when shrinking, the detector's own
  method when enlarging), padded right/bottom to a multiple of 64 by edge replication,
- run through the detector, cropped back to the resized size (not to the input size),
- returned as float32 [B,h,w,3] in 0..1.

OpenCV does the resizing and filtering so that results equal the pack's.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
import torch

from models.progress import ProgressBar
from nodes.constants import MAX_RESOLUTION

DEFAULT_RESOLUTION = 512


def resolution_input():
    return ("INT", {"default": DEFAULT_RESOLUTION, "min": 64, "max": MAX_RESOLUTION, "step": 64})


def preprocessor_inputs(**optional) -> dict:
    """The pack's input layout: only `image` is required, every widget is optional."""
    return {"required": {"image": ("IMAGE",)}, "optional": optional}


def effective_resolution(resolution) -> int:
    # values below 64 (or not ints) fall back to 512, as the pack's common_annotator_call
    return resolution if isinstance(resolution, int) and not isinstance(resolution, bool) and resolution >= 64 \
        else DEFAULT_RESOLUTION


def to_three_channels(x: np.ndarray) -> np.ndarray:
    """uint8 HW / HW1 / HWC3 / HWC4 -> HWC3 (alpha composited over white)."""
    if x.ndim == 2:
        x = x[:, :, None]
    channels = x.shape[2]
    if channels == 3:
        return x
    if channels == 1:
        return np.concatenate([x, x, x], axis=2)
    if channels == 4:
        colour = x[:, :, :3].astype(np.float32)
        alpha = x[:, :, 3:4].astype(np.float32) / 255.0
        return (colour * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)
    raise ValueError(f"an image with {channels} channels cannot be preprocessed (1, 3 or 4 expected)")


def _pad_to_64(n: int) -> int:
    return int(np.ceil(n / 64.0) * 64 - n)


def resize_with_pad(image: np.ndarray, resolution: int, enlarge_with: int = cv2.INTER_CUBIC):
    """Resize (short side = resolution) and pad to multiples of 64. Returns (padded, crop)
    where crop(x) cuts a detector output back to the resized size."""
    img = to_three_channels(image)
    h, w = img.shape[:2]
    k = float(resolution) / float(min(h, w))
    th, tw = int(np.round(h * k)), int(np.round(w * k))
    img = cv2.resize(img, (tw, th), interpolation=enlarge_with if k > 1 else cv2.INTER_AREA)
    padded = np.pad(img, [[0, _pad_to_64(th)], [0, _pad_to_64(tw)], [0, 0]], mode="edge")

    def crop(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x[:th, :tw, ...])

    return np.ascontiguousarray(padded), crop


def non_maximum_suppression(x: np.ndarray, threshold: float, sigma: float) -> np.ndarray:
    """Blur, keep pixels that are maxima along one of the four line directions, threshold to
    0/255 (the pack's `nms`, used by the scribble variants of HED and PiDiNet)."""
    blurred = cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigma)
    directions = [np.array(k, dtype=np.uint8) for k in (
        [[0, 0, 0], [1, 1, 1], [0, 0, 0]], [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
        [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 0, 1], [0, 1, 0], [1, 0, 0]])]
    kept = np.zeros_like(blurred)
    for kernel in directions:
        np.putmask(kept, cv2.dilate(blurred, kernel=kernel) == blurred, blurred)
    out = np.zeros_like(kept, dtype=np.uint8)
    out[kept > threshold] = 255
    return out


def scribble_from_edges(edges: np.ndarray) -> np.ndarray:
    """uint8 soft edges -> thick binary strokes: NMS at 127 (sigma 3), blur sigma 3, >4 -> 255."""
    strokes = non_maximum_suppression(edges, 127, 3.0)
    strokes = cv2.GaussianBlur(strokes, (0, 0), 3.0)
    strokes[strokes > 4] = 255
    strokes[strokes < 255] = 0
    return strokes


def quantise_safe(x: np.ndarray, step: int = 2) -> np.ndarray:
    """The pack's `safe_step`: floor(x*(step+1))/step, i.e. 0, 0.5, 1, 1.5 for step 2."""
    return (x.astype(np.float32) * float(step + 1)).astype(np.int32).astype(np.float32) / float(step)


def run_per_image(detector: Callable[[np.ndarray, int], np.ndarray], images: torch.Tensor, resolution) -> torch.Tensor:
    """Apply `detector(uint8 HWC, resolution) -> uint8 HWC` to each batch item."""
    resolution = effective_resolution(resolution)
    pbar = ProgressBar(images.shape[0])
    out = None
    for i, image in enumerate(images):
        pixels = np.asarray(image.cpu().float() * 255.0, dtype=np.uint8)
        result = torch.from_numpy(detector(pixels, resolution).astype(np.float32) / 255.0)
        if out is None:
            out = torch.zeros(images.shape[0], *result.shape, dtype=torch.float32)
        out[i] = result
        pbar.update(1)
    return out
