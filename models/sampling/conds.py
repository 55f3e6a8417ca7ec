"""Model inputs built from a conditioning (cross-attention context, ADM vector, concat
channels...), and how several of them are batched into one model call.

Each kind knows how to repeat itself to a batch, crop itself to an area, whether it can be
concatenated with another of its kind, and how.
"""
from __future__ import annotations

import math

import torch


def repeat_to_batch_size(t: torch.Tensor, batch_size: int, dim: int = 0) -> torch.Tensor:
    if t.shape[dim] > batch_size:
        return t.narrow(dim, 0, batch_size)
    if t.shape[dim] < batch_size:
        reps = [1] * t.ndim
        reps[dim] = math.ceil(batch_size / t.shape[dim])
        return t.repeat(reps).narrow(dim, 0, batch_size)
    return t


def reshape_mask(mask: torch.Tensor, shape) -> torch.Tensor:
    """A [B?,H,W] mask resized (bilinear) and repeated to a latent shape [B,C,h,w]."""
    mask = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
    mask = torch.nn.functional.interpolate(mask, size=tuple(shape[2:]), mode="bilinear")
    if mask.shape[1] < shape[1]:
        mask = mask.repeat((1, shape[1], 1, 1))[:, :shape[1]]
    return repeat_to_batch_size(mask, shape[0])


class Cond:
    """A tensor input passed as-is, repeated to the batch."""

    def __init__(self, cond):
        self.cond = cond

    def _with(self, cond):
        return self.__class__(cond)

    def process_cond(self, batch_size, **kwargs):
        return self._with(repeat_to_batch_size(self.cond, batch_size))

    def can_concat(self, other) -> bool:
        return self.cond.shape == other.cond.shape and self.cond.device == other.cond.device

    def concat(self, others):
        return torch.cat([self.cond] + [o.cond for o in others])

    def size(self):
        return list(self.cond.size())


class CondNoiseShape(Cond):
    """Shaped like the latent (inpaint concat channels): cropped with the area too."""

    def process_cond(self, batch_size, area=None, **kwargs):
        data = self.cond
        if area is not None:
            dims = len(area) // 2
            for i in range(dims):
                data = data.narrow(i + 2, area[i + dims], area[i])
        return self._with(repeat_to_batch_size(data, batch_size))


class CondCrossAttn(Cond):
    """Cross-attention context [B, tokens, dim]; contexts of different token counts are
    batched by repeating each to the least common multiple (repetition leaves attention
    unchanged), up to 4x padding."""

    def can_concat(self, other) -> bool:
        s1, s2 = self.cond.shape, other.cond.shape
        if s1 != s2:
            if s1[0] != s2[0] or s1[2] != s2[2]:
                return False
            if math.lcm(s1[1], s2[1]) // min(s1[1], s2[1]) > 4:
                return False
        return self.cond.device == other.cond.device

    def concat(self, others):
        conds = [self.cond] + [o.cond for o in others]
        length = 1
        for c in conds:
            length = math.lcm(length, c.shape[1])
        return torch.cat([c.repeat(1, length // c.shape[1], 1) if c.shape[1] < length else c for c in conds])


class CondConstant(Cond):
    """A non-tensor constant; only equal constants batch together."""

    def process_cond(self, batch_size, **kwargs):
        return self._with(self.cond)

    def can_concat(self, other) -> bool:
        return self.cond == other.cond

    def concat(self, others):
        return self.cond

    def size(self):
        return [1]


class CondList(Cond):
    """A list of tensors batched element-wise."""

    def process_cond(self, batch_size, **kwargs):
        return self._with([repeat_to_batch_size(c, batch_size) for c in self.cond])

    def can_concat(self, other) -> bool:
        return len(self.cond) == len(other.cond) and all(
            a.shape == b.shape for a, b in zip(self.cond, other.cond))

    def concat(self, others):
        return [torch.cat([c] + [o.cond[i] for o in others]) for i, c in enumerate(self.cond)]

    def size(self):
        total, width = 0, 1
        for c in self.cond:
            total += math.prod(c.size())
            if c.ndim > 1:
                width = c.size()[1]
        return [1, width, total // width]


# ComfyUI's class names, for custom nodes that build model conds themselves.
CONDRegular, CONDNoiseShape, CONDCrossAttn, CONDConstant, CONDList = Cond, CondNoiseShape, CondCrossAttn, CondConstant, CondList
