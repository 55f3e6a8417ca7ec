"""Layers whose weights may be stored in another dtype than the one they compute in.

A checkpoint stored in fp16 can be kept in fp16 in memory and still run in fp32: each
layer casts its weight to the input's dtype and device when they differ ("manual cast",
as ComfyUI calls it). fp16 -> fp32 is exact, so the numbers equal those of a model whose
weights were upcast at load time, at half the memory.

The networks are built on the "meta" device (no memory, no random init) and receive
their tensors with `load_state_dict(..., assign=True)`, so a parameter's dtype is the
dtype it was loaded in.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cast_like(t: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    if t is None or (t.dtype == x.dtype and t.device == x.device):
        return t
    return t.to(device=x.device, dtype=x.dtype)


def weight_and_bias(module: nn.Module, x: torch.Tensor):
    """The module's weight and bias in x's dtype and on x's device. The layers below inline
    the common case (both already match: no cast, no Python call) and call this otherwise."""
    p = module._parameters
    return cast_like(p["weight"], x), cast_like(p["bias"], x)


# The forwards read `_parameters` directly (nn.Module.__getattr__ is a Python call per
# attribute) and skip the cast when dtype and device already match: hundreds of layers run
# per UNet call, so the per-layer Python cost is a visible part of a small-image step.

class Linear(nn.Linear):
    def forward(self, x):
        p = self._parameters
        w, b = p["weight"], p["bias"]
        if w.dtype != x.dtype or w.device != x.device or (b is not None and (b.dtype != x.dtype or b.device != x.device)):
            w, b = weight_and_bias(self, x)
        return F.linear(x, w, b)


class Conv2d(nn.Conv2d):
    def forward(self, x):
        p = self._parameters
        w, b = p["weight"], p["bias"]
        if w.dtype != x.dtype or w.device != x.device or (b is not None and (b.dtype != x.dtype or b.device != x.device)):
            w, b = weight_and_bias(self, x)
        if self.padding_mode != "zeros":
            return self._conv_forward(x, w, b)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)


class GroupNorm(nn.GroupNorm):
    def forward(self, x):
        p = self._parameters
        w, b = p["weight"], p["bias"]
        if w is not None and (w.dtype != x.dtype or w.device != x.device or b.dtype != x.dtype or b.device != x.device):
            w, b = weight_and_bias(self, x)
        # torch.group_norm: F.group_norm's batch-size check in Python is the same check ATen makes
        return torch.group_norm(x, self.num_groups, w, b, self.eps)


class LayerNorm(nn.LayerNorm):
    def forward(self, x):
        p = self._parameters
        w, b = p["weight"], p["bias"]
        if w is not None and (w.dtype != x.dtype or w.device != x.device or (b is not None and (b.dtype != x.dtype or b.device != x.device))):
            w, b = weight_and_bias(self, x)
        return torch.layer_norm(x, self.normalized_shape, w, b, self.eps)


class Embedding(nn.Embedding):
    def forward(self, ids, out_dtype=None):
        w = self.weight
        if w.device != ids.device or (out_dtype is not None and w.dtype != out_dtype):  # streamed (lowvram) or cast
            w = w.to(device=ids.device, dtype=out_dtype or w.dtype)
        return F.embedding(ids, w)


def load_into(module: nn.Module, state_dict: dict, strict: bool = True, what: str = "model") -> nn.Module:
    """Give a meta-built module its tensors (taken over, not copied). A missing key or a
    shape that does not fit raises ValueError naming the keys; so does an unexpected key
    when strict."""
    own = module.state_dict(keep_vars=True)
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if wrong or missing or (strict and unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} with the wrong shape (e.g. {'; '.join(wrong[:3])})")
        raise ValueError(f"{what} weights do not fit the detected architecture: " + ", ".join(parts))
    module.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False, assign=True)
    module.requires_grad_(False)  # inference weights: no autograd graph behind a sampler's calls
    return module
