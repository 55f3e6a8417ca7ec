"""The networks behind CONTROL_NET: the LDM ControlNet, T2I-Adapters (full and light) and
the low-rank layers of Control-LoRA.

ControlNetModel is the UNet's encoder half (time/label embeddings, `input_blocks.*`,
`middle_block.*`, built from the same UNetConfig and the same layer classes as
models/unet.py) plus the hint encoder `input_hint_block.{0,2,...,14}` (8 convs, three of
them stride 2: pixels -> latent size), one 1x1 `zero_convs.N.0` per input block and
`middle_block_out.0`. Its forward returns {"middle": [r], "output": [r per input block]},
the residuals the UNet adds to its middle output and to the skips its output blocks eat.

The T2I-Adapters read the hint once (pixel-unshuffled to 1/8 or 1/16) and return features
for the UNet's input side (and, for SDXL adapters, the middle block), None where a block
gets nothing.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models import ops
from models.attention import attention
from models.unet import ResBlock, UNetBlock, build_input_blocks, setup_embedding, timestep_embedding


def _zero_conv(channels, device):
    return nn.Sequential(ops.Conv2d(channels, channels, 1, device=device))


def _hint_block(hint_channels, model_channels, device):
    """`input_hint_block`: convs at even indices, SiLU between; 8x down in three stride-2 steps."""
    widths = [(hint_channels, 16, 1), (16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 96, 2), (96, 96, 1),
              (96, 256, 2), (256, model_channels, 1)]
    layers = []
    for i, (cin, cout, stride) in enumerate(widths):
        if i:
            layers.append(nn.SiLU())
        layers.append(ops.Conv2d(cin, cout, 3, stride=stride, padding=1, device=device))
    return nn.Sequential(*layers)


UNION_CONTROLNET_TYPES = {"openpose": 0, "depth": 1, "hed/pidi/scribble/ted": 2, "canny/lineart/anime_lineart/mlsd": 3,
                          "normal": 4, "segment": 5, "tile": 6, "repaint": 7}


class UnionAttentionBlock(nn.Module):
    """Pre-norm self-attention + QuickGELU MLP over the per-type hint features (`attn.in_proj`,
    `attn.out_proj`, `ln_1`, `mlp.c_fc`, `mlp.c_proj`, `ln_2`)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.attn = nn.Module()
        self.attn.in_proj = ops.Linear(dim, dim * 3)
        self.attn.out_proj = ops.Linear(dim, dim)
        self.ln_1 = ops.LayerNorm(dim)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", ops.Linear(dim, dim * 4))
        self.mlp.add_module("c_proj", ops.Linear(dim * 4, dim))
        self.ln_2 = ops.LayerNorm(dim)

    def forward(self, x):
        q, k, v = self.attn.in_proj(self.ln_1(x)).chunk(3, dim=2)
        x = x + self.attn.out_proj(attention(q, k, v, self.heads))
        h = self.mlp.c_fc(self.ln_2(x))
        return x + self.mlp.c_proj(h * torch.sigmoid(1.702 * h))


class ControlAddEmbedding(nn.Module):
    """The chosen control type, one-hot, sinusoidally embedded and projected to the time embedding."""

    def __init__(self, in_dim, out_dim, num_types):
        super().__init__()
        self.in_dim, self.num_types = in_dim, num_types
        self.linear_1 = ops.Linear(in_dim * num_types, out_dim)
        self.linear_2 = ops.Linear(out_dim, out_dim)

    def forward(self, control_type, dtype, device):
        one_hot = torch.zeros((self.num_types,), device=device)
        one_hot[control_type] = 1.0
        e = timestep_embedding(one_hot, self.in_dim).to(dtype).reshape((-1, self.num_types * self.in_dim))
        return self.linear_2(F.silu(self.linear_1(e)))


class ControlNetModel(nn.Module):
    def __init__(self, config, hint_channels: int, device=None, union_types: int | None = None):
        super().__init__()
        c = config
        mc, emb_dim, transformer = setup_embedding(self, c, device)

        self.input_hint_block = _hint_block(hint_channels, mc, device)
        blocks = list(build_input_blocks(c, emb_dim, transformer, device))
        self.input_blocks = nn.ModuleList(block for block, _ in blocks)
        self.zero_convs = nn.ModuleList(_zero_conv(ch, device) for _, ch in blocks)
        ch = blocks[-1][1]

        layers = [ResBlock(ch, emb_dim, ch, device)]
        if c.transformer_depth_middle >= 0:
            layers += [transformer(ch, c.transformer_depth_middle), ResBlock(ch, emb_dim, ch, device)]
        self.middle_block = UNetBlock(layers)
        self.middle_block_out = _zero_conv(ch, device)

        self.num_control_types = union_types
        if union_types:  # ControlNet-Union (xinsir): one network, the control type chosen per use
            # (its type width is the hint features' width: 320 in the real files)
            self.task_embedding = nn.Parameter(torch.empty(union_types, mc, device=device))
            self.transformer_layes = nn.Sequential(UnionAttentionBlock(mc, 8))
            self.spatial_ch_projs = ops.Linear(mc, mc, device=device)
            self.control_add_embedding = ControlAddEmbedding(256, emb_dim, union_types)

    def _union_hint(self, hint, control_type):
        """The hint features shifted by a projection of (their mean + the first type's embedding)."""
        if hint.ndim < 5:
            hint = hint.unsqueeze(0)
        cond = self.input_hint_block(hint[0])
        feat = torch.mean(cond, dim=(2, 3)) + self.task_embedding[control_type[0]].to(cond.dtype)
        x = self.transformer_layes(feat.unsqueeze(1))
        return cond + self.spatial_ch_projs(x[:, 0])[..., None, None]  # one type at a time, as ComfyUI

    def forward(self, x, hint, timesteps, context, y=None, **kwargs):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        guided_hint = None
        if self.num_control_types:
            control_type = list(kwargs.get("control_type", []))
            if any(t >= self.num_control_types for t in control_type):
                names = {v: k for k, v in UNION_CONTROLNET_TYPES.items()}
                raise ValueError(f"control type {names.get(max(control_type), max(control_type))} is out of range "
                                 f"for this union ControlNet ({self.num_control_types} types): use the ProMax model")
            emb = emb + self.control_add_embedding(control_type, emb.dtype, emb.device)
            if control_type:
                guided_hint = self._union_hint(hint, control_type)
        if guided_hint is None:
            guided_hint = self.input_hint_block(hint)
        if self.adm_in_channels:
            if y is None:
                raise ValueError("this ControlNet needs SDXL's ADM vector (y) and got none: "
                                 "is an SDXL ControlNet applied to an SD1.x/SD2.x model?")
            emb = emb + self.label_emb(y)
        opts: dict = {}  # the ControlNet runs without the UNet's transformer patches, as in ComfyUI
        outputs = []
        h = x
        for i, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, context, opts)
            if i == 0:
                h = h + guided_hint
            outputs.append(zero_conv(h))
        h = self.middle_block(h, emb, context, opts)
        return {"middle": [self.middle_block_out(h)], "output": outputs}


# -- Control-LoRA: layers whose weight is the base UNet's plus up @ down ----------------------

def _low_rank_weight(layer, x):
    delta = torch.mm(layer.up.flatten(start_dim=1), layer.down.flatten(start_dim=1)).reshape(layer.weight.shape)
    return ops.cast_like(layer.weight, x) + delta.to(x.dtype)


class LowRankLinear(ops.Linear):
    def forward(self, x):
        return F.linear(x, _low_rank_weight(self, x), ops.cast_like(self.bias, x))


class LowRankConv2d(ops.Conv2d):
    def forward(self, x):
        return self._conv_forward(x, _low_rank_weight(self, x), ops.cast_like(self.bias, x))


def add_low_rank(layer: nn.Module, up: torch.Tensor, down: torch.Tensor) -> None:
    """Make `layer` (an ops.Linear / ops.Conv2d holding the base weight) compute with
    weight + up @ down. The delta is formed per call, as ComfyUI does, so a Control-LoRA costs
    only its own tensors in memory, not a second copy of the UNet encoder."""
    if isinstance(layer, ops.Linear):
        layer.__class__ = LowRankLinear
    elif isinstance(layer, ops.Conv2d):
        layer.__class__ = LowRankConv2d
    else:
        raise ValueError(f"low-rank weights for a {type(layer).__name__}, which has no weight matrix")
    if up.shape[0] != layer.weight.shape[0] or math.prod(down.shape[1:]) != math.prod(layer.weight.shape[1:]):
        raise ValueError(f"low-rank pair up {tuple(up.shape)} / down {tuple(down.shape)} does not fit "
                         f"a weight of shape {tuple(layer.weight.shape)}")
    layer.register_buffer("up", up, persistent=False)
    layer.register_buffer("down", down, persistent=False)


# -- T2I-Adapters ------------------------------------------------------------------------------

class AdapterDownsample(nn.Module):
    """2x down: a stride-2 conv (`op`), or average pooling padded on odd sizes."""

    def __init__(self, channels, use_conv):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.op = ops.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        if self.use_conv:
            return self.op(x)
        return F.avg_pool2d(x, 2, 2, padding=[x.shape[2] % 2, x.shape[3] % 2])


class AdapterResBlock(nn.Module):
    """`in_conv` (only when the width changes), `block1`, ReLU, `block2`, plus the input
    (through `skep` in adapters trained without plain skips)."""

    def __init__(self, in_c, out_c, down, ksize=3, sk=True, use_conv=True):
        super().__init__()
        pad = ksize // 2
        self.in_conv = ops.Conv2d(in_c, out_c, ksize, 1, pad) if (in_c != out_c or not sk) else None
        self.block1 = ops.Conv2d(out_c, out_c, 3, 1, 1)
        self.block2 = ops.Conv2d(out_c, out_c, ksize, 1, pad)
        self.skep = None if sk else ops.Conv2d(in_c, out_c, ksize, 1, pad)
        self.down_opt = AdapterDownsample(in_c, use_conv) if down else None

    def forward(self, x):
        if self.down_opt is not None:
            x = self.down_opt(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        h = self.block2(F.relu(self.block1(x)))
        return h + (self.skep(x) if self.skep is not None else x)


class Adapter(nn.Module):
    """The full T2I-Adapter: `conv_in`, then 4 levels of `nums_rb` res blocks (`body.N`).
    SD1.x adapters unshuffle by 8 and feed input blocks 2, 5, 8, 11; SDXL adapters (xl)
    unshuffle by 16 and feed input blocks 3, 5, 8 and the middle block."""

    def __init__(self, channels, nums_rb, cin, ksize=3, sk=True, use_conv=True, xl=False):
        super().__init__()
        self.xl = xl
        self.unshuffle_amount = 16 if xl else 8
        self.input_channels = cin // (self.unshuffle_amount ** 2)
        self.channels, self.nums_rb = channels, nums_rb
        down_levels, plain_first = ((2,), (1,)) if xl else ((1, 2, 3), ())
        body = []
        for i, ch in enumerate(channels):
            for j in range(nums_rb):
                if j == 0 and (i in down_levels or i in plain_first):
                    body.append(AdapterResBlock(channels[i - 1], ch, i in down_levels, ksize, sk, use_conv))
                else:
                    body.append(AdapterResBlock(ch, ch, False, ksize, sk, use_conv))
        self.body = nn.ModuleList(body)
        self.conv_in = ops.Conv2d(cin, channels[0], 3, 1, 1)

    def forward(self, x):
        x = self.conv_in(F.pixel_unshuffle(x, self.unshuffle_amount))
        features = []
        for i in range(len(self.channels)):
            for j in range(self.nums_rb):
                x = self.body[i * self.nums_rb + j](x)
            # None for the input blocks this level's feature skips (listed first-block-first)
            gaps = ({0: 3, 2: 2}.get(i, 1)) if self.xl else 2
            features += [None] * gaps + [x]
        features.reverse()
        if self.xl:
            return {"input": features[1:], "middle": features[:1]}
        return {"input": features}


class LightResBlock(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.block1 = ops.Conv2d(ch, ch, 3, 1, 1)
        self.block2 = ops.Conv2d(ch, ch, 3, 1, 1)

    def forward(self, x):
        return self.block2(F.relu(self.block1(x))) + x


class LightExtractor(nn.Module):
    def __init__(self, in_c, inter_c, out_c, nums_rb, down):
        super().__init__()
        self.in_conv = ops.Conv2d(in_c, inter_c, 1, 1, 0)
        self.body = nn.Sequential(*[LightResBlock(inter_c) for _ in range(nums_rb)])
        self.out_conv = ops.Conv2d(inter_c, out_c, 1, 1, 0)
        self.down_opt = AdapterDownsample(in_c, use_conv=False) if down else None

    def forward(self, x):
        if self.down_opt is not None:
            x = self.down_opt(x)
        return self.out_conv(self.body(self.in_conv(x)))


class AdapterLight(nn.Module):
    """The light T2I-Adapter (`body.N.in_conv`, `body.N.body.M`, `body.N.out_conv`)."""

    def __init__(self, channels, nums_rb, cin, inter_channels=None):
        super().__init__()
        self.xl = False
        self.unshuffle_amount = 8
        self.input_channels = cin // 64
        self.channels = channels
        inter = inter_channels or [ch // 4 for ch in channels]
        self.body = nn.ModuleList([LightExtractor(cin if i == 0 else channels[i - 1], inter[i], ch, nums_rb, i > 0)
                                   for i, ch in enumerate(channels)])

    def forward(self, x):
        x = F.pixel_unshuffle(x, self.unshuffle_amount)
        features = []
        for block in self.body:
            x = block(x)
            features += [None, None, x]
        return {"input": features[::-1]}
