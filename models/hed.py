"""The HED soft-edge network of ControlNet's annotators ("ControlNetHED", Apache-2, weights
`ControlNetHED.pth` from lllyasviel/Annotators), written from its description:

input RGB in 0..255 minus a learned per-channel `norm`; five VGG-style blocks (3x3 conv + ReLU
layers; 2x2 max-pool before blocks 2-5), each with a 1x1 projection to one channel. The five
side outputs are resized bilinearly to the input size, averaged and passed through a sigmoid.

Attribute names are the checkpoint's keys (`block3.convs.2.weight`, `block5.projection.bias`,
`norm`); widths and depths are read from the state dict, so a tiny file in the same layout
runs through the same code as the real 64/128/256/512/512 one.
"""
from __future__ import annotations

import os
import re

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.state_dict import ModelFileError, load_state_dict

FILE_NAME = "ControlNetHED.pth"
HF_SUBDIR = os.path.join("lllyasviel", "Annotators")  # where the aux pack keeps downloaded weights


class HEDBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, layers: int):
        super().__init__()
        self.convs = nn.Sequential(*[nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1)
                                     for i in range(layers)])
        self.projection = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor, pool: bool):
        if pool:
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        for conv in self.convs:
            x = F.relu(conv(x))
        return x, self.projection(x)


class ControlNetHED(nn.Module):
    def __init__(self, widths=(64, 128, 256, 512, 512), depths=(2, 2, 3, 3, 3)):
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        previous = 3
        for i, (width, depth) in enumerate(zip(widths, depths), start=1):
            setattr(self, f"block{i}", HEDBlock(previous, width, depth))
            previous = width
        self.block_count = len(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[1,3,H,W] pixels in 0..255 -> the side outputs (logits) at 1, 1/2, 1/4, ... scale."""
        h = x - self.norm
        sides = []
        for i in range(1, self.block_count + 1):
            h, side = getattr(self, f"block{i}")(h, pool=i > 1)
            sides.append(side)
        return sides


def _layout(sd: dict) -> tuple[list[int], list[int]]:
    widths, depths = [], []
    i = 1
    while f"block{i}.convs.0.weight" in sd:
        widths.append(sd[f"block{i}.convs.0.weight"].shape[0])
        layers = {int(m.group(1)) for k in sd if (m := re.fullmatch(rf"block{i}\.convs\.(\d+)\.weight", k))}
        depths.append(len(layers))
        i += 1
    return widths, depths


def build_hed(sd: dict, name: str = FILE_NAME) -> ControlNetHED:
    """A float32 eval-mode ControlNetHED from a state dict in the checkpoint's layout."""
    if "norm" not in sd or "block1.convs.0.weight" not in sd:
        raise ModelFileError(f"{name} is not a ControlNetHED checkpoint (no 'norm' / 'block1.convs.0.weight' keys)")
    widths, depths = _layout(sd)
    model = ControlNetHED(widths, depths)
    try:
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    except RuntimeError as e:
        raise ModelFileError(f"{name} does not match the ControlNetHED layout: {e}") from e
    return model.eval().requires_grad_(False)


_cache: dict[str, tuple[tuple, ControlNetHED]] = {}


def load_hed(path: str) -> ControlNetHED:
    """Load (or reuse while the file is unchanged) the network stored at `path`."""
    stat = os.stat(path)
    key = (stat.st_mtime_ns, stat.st_size)
    hit = _cache.get(path)
    if hit and hit[0] == key:
        return hit[1]
    model = build_hed(load_state_dict(path), os.path.basename(path))
    _cache.clear()  # one annotator network kept at a time
    _cache[path] = (key, model)
    return model


@torch.inference_mode()
def hed_edges(model: ControlNetHED, image: np.ndarray, device=None) -> np.ndarray:
    """uint8 HWC RGB -> float64 HW edge probability in 0..1."""
    if device is None:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    height, width = image.shape[:2]
    model.to(device)
    x = torch.from_numpy(np.ascontiguousarray(image)).float().to(device).permute(2, 0, 1)[None]
    sides = [s[0, 0].float().cpu().numpy() for s in model(x)]
    # OpenCV's bilinear resize, as the pack does, so maps equal its output
    sides = [cv2.resize(s, (width, height), interpolation=cv2.INTER_LINEAR) for s in sides]
    mean = np.mean(np.stack(sides, axis=2), axis=2).astype(np.float64)
    return 1.0 / (1.0 + np.exp(-mean))
