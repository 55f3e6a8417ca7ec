"""The UNet's spatial transformer: attention, feed-forward and the transformer blocks.

Attribute names are the checkpoint's (`transformer_blocks.0.attn2.to_k.weight`, ...).
Attention goes through torch's scaled_dot_product_attention. The ComfyUI transformer
patch points used by custom nodes (IP-Adapter style) are honoured: `attn1_patch`,
`attn1_output_patch`, `attn2_patch`, `attn2_output_patch`, `middle_patch` and the
`patches_replace` entries `attn1` / `attn2` keyed by (block kind, block id[, index]).

Speed, with the numbers of the plain path (tests/test_attention_speed.py):
- fused QKV: self-attention projects q, k and v in one matmul. The three weights are
  re-pointed, once, at consecutive rows of one [3*inner, dim] tensor, so the fused weight is
  a view of them: no second copy in memory, the state-dict keys and tensors stay
  `to_q/to_k/to_v.weight`, and LoRA patches written in place are seen at once. A weight
  swapped for another tensor (a widening patch, a restore, a move between devices) breaks
  the adjacency, and the next call re-fuses; weights not on the input's device (streamed per
  call with --lowvram) or of mixed dtypes run as three matmuls. Cross-attention fuses its
  k and v projections of the text context the same way. On CUDA by default.
- per-call Python: the transformer block goes straight through when no patch is set, and
  the Sequential wrappers (to_out, ff.net) are stepped over to their layers (the Identity
  entries are dropout slots); the state-dict keys stay those of the checkpoints.
- SDPA backends: on CUDA the fused kernels come first (flash, memory-efficient, cuDNN), the
  math kernel last; the choice for each dtype/head size is logged once.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from models import ops

log = logging.getLogger(__name__)

# device types whose self-attention projects q, k, v in one matmul (set_fused_qkv changes it)
_FUSED_QKV_DEVICES = {"cuda"}


def set_fused_qkv(device_types) -> set:
    """Device types ("cuda", "cpu") that fuse the q/k/v projections; returns the previous set."""
    global _FUSED_QKV_DEVICES
    previous, _FUSED_QKV_DEVICES = _FUSED_QKV_DEVICES, set(device_types)
    return previous


def _adjacent_rows(ws) -> bool:
    """Are the weights consecutive row blocks of one contiguous tensor?"""
    first = ws[0]
    if not first.is_contiguous():
        return False
    base = first.untyped_storage().data_ptr()
    offset = first.storage_offset()
    for w in ws:
        if not w.is_contiguous() or w.untyped_storage().data_ptr() != base or w.storage_offset() != offset:
            return False
        offset += w.numel()
    return True


@torch.no_grad()
def _fuse(ws) -> None:
    fused = torch.cat([w.detach() for w in ws])
    start = 0
    for w in ws:  # the parameters stay (same objects, same keys), their data moves into `fused`
        w.data = fused[start:start + w.shape[0]]
        start += w.shape[0]


def fused_weight(linears, x: torch.Tensor) -> torch.Tensor | None:
    """The [sum of out, in] weight of `linears` as one tensor (a view of their weights), fusing
    them on first use; None where they cannot be fused for an input like x. The common case
    (already fused, on x's device) costs a few microseconds."""
    ws = [m._parameters["weight"] for m in linears]  # (nn.Module.__getattr__ is slow on a hot path)
    w0 = ws[0]
    if w0.device != x.device:
        return None  # streamed per call (--lowvram) or partially loaded: three matmuls
    if not _adjacent_rows(ws):
        if any(m.bias is not None for m in linears) or any(
                w.device != w0.device or w.dtype != w0.dtype or w.shape[1:] != w0.shape[1:] for w in ws):
            return None
        _fuse(ws)
    rows = 0
    for w in ws:
        rows += w.shape[0]
    return w0.as_strided((rows,) + tuple(w0.shape[1:]), w0.stride())  # inference weights: no detach needed


# -- scaled dot-product attention ------------------------------------------------------------

_SDPA = {"configured": False, "reported": set()}
# the fused kernels first; math only where none applies (fp32 on flash, odd head sizes, masks)
_PREFERRED = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")


def _prefer_fused_sdpa() -> list:
    """Once per process, on CUDA: every backend enabled, in the order of _PREFERRED."""
    from torch.nn.attention import SDPBackend
    order = [getattr(SDPBackend, n) for n in _PREFERRED if hasattr(SDPBackend, n)]
    _SDPA["configured"] = True
    try:
        for name in ("flash", "mem_efficient", "cudnn", "math"):
            getattr(torch.backends.cuda, f"enable_{name}_sdp", lambda on: None)(True)
        current = list(torch._C._get_sdp_priority_order())
        wanted = [int(b) for b in order]
        torch._C._set_sdp_priority_order(wanted + [b for b in current if b not in wanted])
    except (AttributeError, RuntimeError) as e:  # an older or newer torch: its own default order
        log.info("attention: could not set the SDPA backend order (%s); using torch's default", e)
    _SDPA["order"] = order
    return order


def _report_sdpa(q, k, v, mask) -> None:
    """Log once per (dtype, head size, mask) which backend SDPA picks on this device."""
    key = (q.device.type, q.dtype, q.shape[-1], mask is not None)
    if key in _SDPA["reported"]:
        return
    _SDPA["reported"].add(key)
    picked = "math"
    try:
        params = torch.backends.cuda.SDPAParams(q, k, v, mask, 0.0, False, False)
        checks = {"FLASH_ATTENTION": torch.backends.cuda.can_use_flash_attention,
                  "EFFICIENT_ATTENTION": torch.backends.cuda.can_use_efficient_attention,
                  "CUDNN_ATTENTION": getattr(torch.backends.cuda, "can_use_cudnn_attention", None)}
        for backend in _SDPA.get("order", []):
            check = checks.get(backend.name)
            if check is not None and check(params, False):
                picked = backend.name.lower()
                break
    except (AttributeError, RuntimeError, TypeError) as e:
        picked = f"unknown ({e})"
    log.info("attention: SDPA on %s, %s, %d-dim heads%s -> %s", q.device, str(q.dtype).replace("torch.", ""),
             q.shape[-1], ", masked" if mask is not None else "", picked)


def attention(q, k, v, heads: int, mask=None) -> torch.Tensor:
    """Multi-head attention on [B, L, heads*d] projections -> [B, Lq, heads*d].

    SD2's "attention in fp32" flag is not applied here: like ComfyUI's SDPA path, the fused
    kernels already accumulate the softmax in fp32 (the flag only reaches patches)."""
    b, _, inner = q.shape
    d = inner // heads
    q = q.view(b, -1, heads, d).transpose(1, 2)
    k = k.view(b, -1, heads, d).transpose(1, 2)
    v = v.view(b, -1, heads, d).transpose(1, 2)
    if mask is not None:
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if mask.ndim == 3:
            mask = mask.unsqueeze(1)
    if q.is_cuda:
        if not _SDPA["configured"]:
            _prefer_fused_sdpa()
        _report_sdpa(q, k, v, mask)
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
        m = self._modules
        context = x if context is None else context
        value = context if value is None else value
        fuse = x.device.type in _FUSED_QKV_DEVICES and not torch.compiler.is_compiling()
        if fuse and context is x and value is x:
            qkv = self._fused((m["to_q"], m["to_k"], m["to_v"]), x)
        else:
            qkv = None
        if qkv is not None:
            q, k, v = qkv
        else:
            q = m["to_q"](x)
            kv = self._fused((m["to_k"], m["to_v"]), context) if fuse and value is context else None
            k, v = kv if kv is not None else (m["to_k"](context), m["to_v"](value))
        # to_out is Sequential(Linear, Identity): the Linear alone (the Identity is a dropout slot)
        return m["to_out"]._modules["0"](attention(q, k, v, self.heads, mask))

    @staticmethod
    def _fused(linears, x):
        """The projections of x by `linears` from one matmul (self-attention's q, k, v;
        cross-attention's k, v of the text context), or None where they cannot be fused."""
        w = fused_weight(linears, x)
        if w is None:
            return None
        return F.linear(x, ops.cast_like(w, x)).chunk(len(linears), dim=-1)


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
        net = self._modules["net"]._modules  # GEGLU, Identity (dropout slot), Linear
        return net["2"](net["0"](x))


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
        m = self._modules
        if not patches and not replace:  # no patch point in use: straight through
            x = m["attn1"](m["norm1"](x)) + x
            x = m["attn2"](m["norm2"](x), context=context) + x
            return m["ff"](m["norm3"](x)) + x
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
        x = x.reshape(b, h, w, x.shape[-1]).movedim(3, 1)
        if self.use_linear:
            # the residual add reads the NHWC tokens in place and writes the input's layout
            # (x_in first decides it): no separate layout copy
            return x_in + x
        # back to the input's layout for the 1x1 conv: NHWC tokens are already channels_last
        nhwc = x_in.is_contiguous(memory_format=torch.channels_last) and not x_in.is_contiguous()
        x = x.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
        return self.proj_out(x) + x_in
