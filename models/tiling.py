"""Running a network tile by tile over a large image or latent (VAEDecodeTiled /
VAEEncodeTiled, upscale models), with ComfyUI's blending.

Tiles start every (tile - overlap) pixels; the last one is shifted back to end at the
edge. Each tile's output is weighted by a ramp over its overlap at every side (1/f, 2/f,
... up to 1, f = the overlap in output pixels) and the weighted sum is divided by the sum
of the weights.
"""
from __future__ import annotations

import itertools
import math

import torch


def tile_count(width: int, height: int, tile_x: int, tile_y: int, overlap: int) -> int:
    rows = 1 if height <= tile_y else math.ceil((height - overlap) / (tile_y - overlap))
    cols = 1 if width <= tile_x else math.ceil((width - overlap) / (tile_x - overlap))
    return rows * cols


@torch.inference_mode()
def tiled_scale(samples: torch.Tensor, function, tile_x: int = 64, tile_y: int = 64, overlap: int = 8,
                upscale_amount: float = 4, out_channels: int = 3, output_device="cpu", pbar=None) -> torch.Tensor:
    """Apply `function` ([1,C,h,w] -> [1,out_channels,h*s,w*s]) tile by tile to a [B,C,H,W] batch."""
    tile = (tile_y, tile_x)
    out_size = [round(d * upscale_amount) for d in samples.shape[2:]]
    output = torch.empty([samples.shape[0], out_channels] + out_size, device=output_device)
    for b in range(samples.shape[0]):
        s = samples[b:b + 1]
        if all(s.shape[d + 2] <= tile[d] for d in range(2)):
            output[b:b + 1] = function(s).to(output_device)
            if pbar is not None:
                pbar.update(1)
            continue
        acc = torch.zeros([1, out_channels] + out_size, device=output_device)
        weight = torch.zeros_like(acc)
        starts = [range(0, s.shape[d + 2] - overlap, tile[d] - overlap) if s.shape[d + 2] > tile[d] else [0]
                  for d in range(2)]
        for corner in itertools.product(*starts):
            piece, offsets = s, []
            for d in range(2):
                pos = max(0, min(s.shape[d + 2] - overlap, corner[d]))
                piece = piece.narrow(d + 2, pos, min(tile[d], s.shape[d + 2] - pos))
                offsets.append(round(pos * upscale_amount))
            result = function(piece).to(output_device)
            mask = torch.ones_like(result)
            for d in (2, 3):
                feather = round(overlap * upscale_amount)
                if feather >= mask.shape[d]:
                    continue
                for t in range(feather):
                    a = (t + 1) / feather
                    mask.narrow(d, t, 1).mul_(a)
                    mask.narrow(d, mask.shape[d] - 1 - t, 1).mul_(a)
            region = acc.narrow(2, offsets[0], mask.shape[2]).narrow(3, offsets[1], mask.shape[3])
            region_w = weight.narrow(2, offsets[0], mask.shape[2]).narrow(3, offsets[1], mask.shape[3])
            region.add_(result * mask)
            region_w.add_(mask)
            if pbar is not None:
                pbar.update(1)
        output[b:b + 1] = acc / weight
    return output
