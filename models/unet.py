"""The latent-diffusion UNet of SD1.x, SD2.x and SDXL (base, refiner, reduced-depth variants).

Attribute names follow the checkpoint keys under `model.diffusion_model.`:
`time_embed.{0,2}`, `label_emb.0.{0,2}` (SDXL's ADM vector), `input_blocks.N.M`,
`middle_block.M`, `output_blocks.N.M`, `out.{0,2}`. Block N is a list of layers, each a
ResBlock (`in_layers`, `emb_layers`, `out_layers`, `skip_connection`), a
SpatialTransformer (models/attention.py), a Downsample (`op`) or an Upsample (`conv`).

The shape of the network comes from a UNetConfig (models/detect.py), itself read from the
state dict's shapes.

channels_last (`--force-channels-last`, as in ComfyUI; off by default): the conv weights are
converted on the first call on the device and the input enters NHWC, so cuDNN runs its NHWC
kernels and the transformers' NCHW<->token reshapes stop copying; the output leaves in the
usual layout. Off by default because PyTorch's CUDA GroupNorm takes NCHW-contiguous input
(aten group_norm.cpp makes it so), which adds two layout copies around every GroupNorm of
the eager UNet. Under torch.compile only the input is converted (inductor picks layouts).
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from models import devices, ops
from models.attention import SpatialTransformer


def channels_last_wanted() -> bool:
    return bool(getattr(devices.settings(), "channels_last", False))


@torch.no_grad()
def to_channels_last(convs) -> None:
    """4-D weights into NHWC layout, in place (the parameters stay the same objects; a weight
    swapped since, e.g. by a widening LoRA patch, is converted again on the next call)."""
    for m in convs:
        w = m.weight
        if w.ndim == 4 and not w.is_contiguous(memory_format=torch.channels_last):
            w.data = w.data.contiguous(memory_format=torch.channels_last)


_FREQS: dict = {}  # (half, max_period, device) -> the embedding's frequencies


def _frequencies(half: int, max_period: int, device) -> torch.Tensor:
    """exp(-ln(max_period) * i / half), made once per device (not an arange + exp per call).
    Made outside inference mode so the cached tensor is a normal one wherever it is used."""
    key = (half, max_period, device)
    freqs = _FREQS.get(key)
    if freqs is None:
        with torch.inference_mode(False), torch.no_grad():
            freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=device) / half)
        _FREQS[key] = freqs
    return freqs


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding, cos half first then sin half (float32)."""
    half = dim // 2
    if torch.compiler.is_compiling():  # a constant the graph makes itself, no cached tensor to guard on
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    else:
        freqs = _frequencies(half, max_period, timesteps.device)
    if timesteps.dtype != torch.float32:
        timesteps = timesteps.float()
    args = timesteps.unsqueeze(1) * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class ResBlock(nn.Module):
    def __init__(self, channels, emb_channels, out_channels, device=None):
        super().__init__()
        self.in_layers = nn.Sequential(ops.GroupNorm(32, channels, device=device), nn.SiLU(),
                                       ops.Conv2d(channels, out_channels, 3, padding=1, device=device))
        self.emb_layers = nn.Sequential(nn.SiLU(), ops.Linear(emb_channels, out_channels, device=device))
        self.out_layers = nn.Sequential(ops.GroupNorm(32, out_channels, device=device), nn.SiLU(), nn.Identity(),
                                        ops.Conv2d(out_channels, out_channels, 3, padding=1, device=device))
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = ops.Conv2d(channels, out_channels, 1, device=device)

    def forward(self, x, emb, emb_silu=None):
        """emb_silu: silu(emb) when the caller already has it (the UNet computes it once for
        all its ResBlocks). The Sequentials are kept for the checkpoint keys, but their
        norm/conv/linear layers are called directly: the SiLU, Identity (dropout) and
        Sequential module calls cost Python time per block and compute nothing more."""
        m = self._modules
        inl, embl, outl = m["in_layers"]._modules, m["emb_layers"]._modules, m["out_layers"]._modules
        h = inl["2"](F.silu(inl["0"](x)))
        e = embl["1"](F.silu(emb) if emb_silu is None else emb_silu)
        if e.dtype != h.dtype:
            e = e.to(h.dtype)
        h = h + e.view(e.shape[0], e.shape[1], 1, 1)
        h = outl["3"](F.silu(outl["0"](h)))
        skip = m["skip_connection"]
        return (x if type(skip) is nn.Identity else skip(x)) + h


class Downsample(nn.Module):
    def __init__(self, channels, device=None):
        super().__init__()
        self.op = ops.Conv2d(channels, channels, 3, stride=2, padding=1, device=device)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels, device=None):
        super().__init__()
        self.conv = ops.Conv2d(channels, channels, 3, padding=1, device=device)

    def forward(self, x, output_shape=None):
        # Nearest 2x, or to the size of the skip tensor it will meet (odd latent sizes).
        size = [x.shape[2] * 2, x.shape[3] * 2] if output_shape is None else list(output_shape[2:4])
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class UNetBlock(nn.ModuleList):
    """One entry of input_blocks / middle_block / output_blocks: its layers in order."""

    def forward(self, x, emb, context, transformer_options, output_shape=None, emb_silu=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, emb_silu)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, transformer_options)
                transformer_options["transformer_index"] = transformer_options.get("transformer_index", 0) + 1
            elif isinstance(layer, Upsample):
                x = layer(x, output_shape)
            else:
                x = layer(x)
        return x


def add_control(h, control, name):
    """ControlNet / T2I-Adapter residuals: `control[name]` is a list consumed from its end,
    one entry per block (None = nothing for this block). A residual that does not fit is
    skipped with a warning, as ComfyUI does."""
    if control is not None and control.get(name):
        residual = control[name].pop()
        if residual is not None:
            try:
                fits = torch.broadcast_shapes(h.shape, residual.shape) == h.shape
            except RuntimeError:
                fits = False
            if fits:
                return h + residual.to(h.dtype)
            logging.warning("control residual %s could not be applied to %s", tuple(residual.shape), tuple(h.shape))
    return h

def _embedders(c, device=None):
    """(embedding width, time_embed, label_emb or None) in the checkpoints' key layout."""
    mc = c.model_channels
    emb_dim = mc * 4
    time_embed = nn.Sequential(ops.Linear(mc, emb_dim, device=device), nn.SiLU(),
                               ops.Linear(emb_dim, emb_dim, device=device))
    label_emb = None
    if c.adm_in_channels:
        label_emb = nn.Sequential(nn.Sequential(ops.Linear(c.adm_in_channels, emb_dim, device=device), nn.SiLU(),
                                                ops.Linear(emb_dim, emb_dim, device=device)))
    return emb_dim, time_embed, label_emb


def setup_embedding(model: nn.Module, c, device=None):
    """What the UNet and its ControlNet both start with: the config, the time (and ADM label)
    embedders, and the transformer factory. Returns (model channels, embedding width,
    transformer(channels, depth))."""
    model.config = c
    mc = model.model_channels = c.model_channels
    emb_dim, model.time_embed, label_emb = _embedders(c, device)
    model.adm_in_channels = c.adm_in_channels
    if label_emb is not None:
        model.label_emb = label_emb

    def transformer(ch, depth):
        heads, dim_head = c.heads_for(ch)
        return SpatialTransformer(ch, heads, dim_head, depth, c.context_dim, c.use_linear_in_transformer,
                                  c.attn_precision, device)
    return mc, emb_dim, transformer


def build_input_blocks(c, emb_dim: int, transformer, device=None):
    """The encoder half both networks share: (UNetBlock, its output channels), stem conv first."""
    mc = c.model_channels
    yield UNetBlock([ops.Conv2d(c.in_channels, mc, 3, padding=1, device=device)]), mc
    depths = list(c.transformer_depth)
    ch = mc
    for level, mult in enumerate(c.channel_mult):
        for _ in range(c.num_res_blocks[level]):
            layers = [ResBlock(ch, emb_dim, mult * mc, device)]
            ch = mult * mc
            depth = depths.pop(0)
            if depth > 0:
                layers.append(transformer(ch, depth))
            yield UNetBlock(layers), ch
        if level != len(c.channel_mult) - 1:
            yield UNetBlock([Downsample(ch, device)]), ch


class UNetModel(nn.Module):
    def __init__(self, config, device=None):
        super().__init__()
        c = config
        mc, emb_dim, transformer = setup_embedding(self, c, device)
        blocks = list(build_input_blocks(c, emb_dim, transformer, device))
        self.input_blocks = nn.ModuleList(block for block, _ in blocks)
        skip_channels = [ch for _, ch in blocks]
        ch = skip_channels[-1]

        self.middle_block = None
        if c.transformer_depth_middle >= -1:  # -1: a single ResBlock, -2: no middle block
            layers = [ResBlock(ch, emb_dim, ch, device)]
            if c.transformer_depth_middle >= 0:
                layers += [transformer(ch, c.transformer_depth_middle), ResBlock(ch, emb_dim, ch, device)]
            self.middle_block = UNetBlock(layers)

        depth_out = list(c.transformer_depth_output)
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks[level] + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mc * mult, device)]
                ch = mc * mult
                depth = depth_out.pop()
                if depth > 0:
                    layers.append(transformer(ch, depth))
                if level and i == c.num_res_blocks[level]:
                    layers.append(Upsample(ch, device))
                self.output_blocks.append(UNetBlock(layers))

        self.out = nn.Sequential(ops.GroupNorm(32, ch, device=device), nn.SiLU(),
                                 ops.Conv2d(mc, c.out_channels, 3, padding=1, device=device))

    def forward(self, x, timesteps, context=None, y=None, control=None, transformer_options=None, **kwargs):
        """x [B,C,H,W] (already scaled by c_in), integer-valued timesteps [B], text context
        [B,T,D], ADM vector y [B,adm] (SDXL), ControlNet residuals `control` = {"input": [...],
        "middle": [...], "output": [...]}; returns the raw prediction (eps or v)."""
        opts = transformer_options if transformer_options is not None else {}
        opts["original_shape"] = list(x.shape)
        opts["transformer_index"] = 0
        patches = opts.get("patches", {})
        nhwc = channels_last_wanted() and x.ndim == 4
        if nhwc:
            convs = self.__dict__.get("_convs")
            if convs is None:  # not a submodule list: kept out of the state dict and of .to()
                convs = self.__dict__["_convs"] = [m for m in self.modules() if isinstance(m, nn.Conv2d)]
            if not torch.compiler.is_compiling():
                to_channels_last(convs)
            x = x.contiguous(memory_format=torch.channels_last)
        if (y is not None) != bool(self.adm_in_channels):
            raise ValueError("the ADM vector y must be given exactly when the UNet has a label embedding")

        t_emb = timestep_embedding(timesteps, self.model_channels)
        emb = self.time_embed(t_emb if t_emb.dtype == x.dtype else t_emb.to(x.dtype))
        for p in patches.get("emb_patch", []):
            emb = p(emb, self.model_channels, opts)
        if y is not None:
            emb = emb + self.label_emb(y if y.dtype == x.dtype else y.to(x.dtype))
        emb_silu = F.silu(emb)  # every ResBlock's emb_layers starts with it: once per call

        skips = []
        h = x
        for i, block in enumerate(self.input_blocks):
            opts["block"] = ("input", i)
            h = block(h, emb, context, opts, emb_silu=emb_silu)
            if control is not None:
                h = add_control(h, control, "input")
            for p in patches.get("input_block_patch", []):
                h = p(h, opts)
            skips.append(h)
            for p in patches.get("input_block_patch_after_skip", []):
                h = p(h, opts)

        opts["block"] = ("middle", 0)
        if self.middle_block is not None:
            h = self.middle_block(h, emb, context, opts, emb_silu=emb_silu)
        if control is not None:
            h = add_control(h, control, "middle")

        for i, block in enumerate(self.output_blocks):
            opts["block"] = ("output", i)
            skip = skips.pop()
            if control is not None:
                skip = add_control(skip, control, "output")
            for p in patches.get("output_block_patch", []):
                h, skip = p(h, skip, opts)
            h = torch.cat([h, skip], dim=1)
            h = block(h, emb, context, opts, output_shape=skips[-1].shape if skips else None, emb_silu=emb_silu)
        if h.dtype != x.dtype:
            h = h.to(x.dtype)
        out = self.out._modules  # GroupNorm, SiLU, Conv2d called directly (no Sequential/SiLU module calls)
        out = out["2"](F.silu(out["0"](h)))
        return out.contiguous() if nhwc else out
