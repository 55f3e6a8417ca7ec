"""The UNet's spatial transformer: attention, feed-forward and the transformer blocks.

Attribute names are the checkpoint's (`transformer_blocks.0.attn2.to_k.weight`, ...).
Attention goes through torch's scaled_dot_product_attention. The ComfyUI transformer
patch points used by custom nodes (IP-Adapter style) are honoured: `attn1_patch`,
`attn1_output_patch`, `attn2_patch`, `attn2_output_patch`, `middle_patch` and the
`patches_replace` entries `attn1` / `attn2` keyed by (block kind, block id[, index]).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models import ops


def attention(q, k, v, heads: int, mask=None) -> torch.Tensor:
    """Multi-head attention on [B, L, heads*d] projections -> [B, Lq, heads*d].

    SD2's "attention in fp32" flag is not applied here: like ComfyUI's SDPA path, the fused
    kernels already accumulate the softmax in fp32 (the flag only reaches patches)."""
    b, _, inner = q.shape
    d = inner // heads
    q, k, v = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    if mask is not None:
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if mask.ndim == 3:
            mask = mask.unsqueeze(1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, -1, inner)


class CrossAttention(nn.Module):
    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, precision=None, device=None):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads, self.dim_head, self.precision = heads, dim_head, precision
        self.to_q = ops.Linear(query_dim, inner, bias=False, device=device)
        self.to_k = ops.Linear(context_dim, inner, bias=False, device=device)
        self.to_v = ops.Linear(context_dim, inner, bias=False, device=device)
        self.to_out = nn.Sequential(ops.Linear(inner, query_dim, device=device), nn.Identity())

    def forward(self, x, context=None, value=None, mask=None):
        context = x if context is None else context
        q, k = self.to_q(x), self.to_k(context)
        v = self.to_v(context if value is None else value)
        return self.to_out(attention(q, k, v, self.heads, mask))


class GEGLU(nn.Module):
    def __init__(self, dim_in, dim_out, device=None):
        super().__init__()
        self.proj = ops.Linear(dim_in, dim_out * 2, device=device)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)  # exact (erf) GELU, not the tanh approximation


class FeedForward(nn.Module):
    """`net.0.proj` (GEGLU, 4x width), `net.2` (back to the width)."""

    def __init__(self, dim, mult=4, device=None):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner, device=device), nn.Identity(), ops.Linear(inner, dim, device=device))

    def forward(self, x):
        return self.net(x)


def _run_patches(patches, name, *args):
    for p in patches.get(name, []):
        args = p(*args)
    return args


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention on the text context, feed-forward."""

    def __init__(self, dim, heads, dim_head, context_dim, precision=None, device=None):
        super().__init__()
        self.heads, self.dim_head, self.precision = heads, dim_head, precision
        self.attn1 = CrossAttention(dim, None, heads, dim_head, precision, device)
        self.ff = FeedForward(dim, device=device)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, precision, device)
        self.norm1 = ops.LayerNorm(dim, device=device)
        self.norm2 = ops.LayerNorm(dim, device=device)
        self.norm3 = ops.LayerNorm(dim, device=device)

    def forward(self, x, context=None, transformer_options=None):
        opts = transformer_options or {}
        patches = opts.get("patches", {})
        replace = opts.get("patches_replace", {})
        extra = {k: v for k, v in opts.items() if k not in ("patches", "patches_replace")}
        extra.update(n_heads=self.heads, dim_head=self.dim_head, attn_precision=self.precision)
        block = opts.get("block")
        full_block = (block[0], block[1], opts.get("block_index", 0)) if block is not None else None

        x = self._attend(self.attn1, self.norm1(x), None, "attn1", patches, replace, block, full_block, extra) + x
        for p in patches.get("middle_patch", []):
            x = p(x, extra)
        x = self._attend(self.attn2, self.norm2(x), context, "attn2", patches, replace, block, full_block, extra) + x
        return self.ff(self.norm3(x)) + x

    def _attend(self, attn, n, context, name, patches, replace, block, full_block, extra):
        value = None
        if f"{name}_patch" in patches:
            context = n if context is None else context
            value = context
            n, context, value = _run_patches(patches, f"{name}_patch", n, context, value, extra)[:3]
        table = replace.get(name, {})
        key = full_block if full_block in table else block
        if key is not None and key in table:
            context = n if context is None else context
            value = context if value is None else value
            n = table[key](attn.to_q(n), attn.to_k(context), attn.to_v(value), extra)
            n = attn.to_out(n)
        else:
            n = attn(n, context=context, value=value)
        for p in patches.get(f"{name}_output_patch", []):
            n = p(n, extra)
        return n


class SpatialTransformer(nn.Module):
    """GroupNorm, proj_in (1x1 conv for SD1, linear for SD2/SDXL), `depth` transformer
    blocks on the flattened pixels, proj_out, plus the input."""

    def __init__(self, channels, heads, dim_head, depth, context_dim, use_linear, precision=None, device=None):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = ops.GroupNorm(32, channels, eps=1e-6, device=device)
        if use_linear:
            self.proj_in = ops.Linear(channels, inner, device=device)
            self.proj_out = ops.Linear(inner, channels, device=device)
        else:
            self.proj_in = ops.Conv2d(channels, inner, 1, device=device)
            self.proj_out = ops.Conv2d(inner, channels, 1, device=device)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, context_dim, precision, device) for _ in range(depth)])

    def forward(self, x, context=None, transformer_options=None):
        opts = transformer_options if transformer_options is not None else {}
        b, c, h, w = x.shape
        opts["activations_shape"] = list(x.shape)
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.movedim(1, 3).flatten(1, 2).contiguous()
        if self.use_linear:
            x = self.proj_in(x)
        for i, block in enumerate(self.transformer_blocks):
            opts["block_index"] = i
            x = block(x, context=context, transformer_options=opts)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.reshape(b, h, w, x.shape[-1]).movedim(3, 1).contiguous()
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in
