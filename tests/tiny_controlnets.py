"""Tiny seeded ControlNet, Control-LoRA and T2I-Adapter files in the real key layouts.

Scaled down like tests/tiny_checkpoints.py (UNet width 320 -> 32, text context and ADM
widths those of the tiny checkpoints): the SD1.5 ControlNet from the layout of the public
`control_v11p_sd15_*` files, the Control-LoRA from `control-lora-depth-rank256` (rank 256 ->
8). ControlNets of the other families are the tiny checkpoint's UNet encoder plus the hint
block, zero convs and middle-block-out of the SD1.5 layout. T2I-Adapters have no layout file:
their keys are those of the TencentARC files (`conv_in`, `body.N.block1` ...).
"""
from __future__ import annotations

import os
import re

import torch

from tiny_checkpoints import CLIP_G_WIDTH, CLIP_L_WIDTH, UNET, _value, real_layout, tiny_layout

CONTROL_RANK = 8
_CONTEXT = {"sd1": CLIP_L_WIDTH, "sdxl": CLIP_L_WIDTH + CLIP_G_WIDTH}


def _scale(shape, base=320, tiny=32):
    return tuple(d // base * tiny if d % base == 0 else d for d in shape)


def _fill(layout: dict, seed: int, dtype) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: _value(k, layout[k], layout, gen).to(dtype) for k in sorted(layout)}


def sd15_controlnet_layout() -> dict[str, tuple]:
    out = {}
    for k, shape in real_layout("sd15_controlnet").items():
        new = list(_scale(shape))
        if re.search(r"attn2\.to_[kv]\.weight$", k):
            new[1] = _CONTEXT["sd1"]
        out[k] = tuple(new)
    return out


def controlnet_layout(family: str, prefix: str = "", hint_channels: int = 3) -> dict[str, tuple]:
    """A ControlNet for a tiny family: its UNet's encoder keys + the control-only parts."""
    unet = {k[len(UNET):]: v for k, v in tiny_layout(family).items() if k.startswith(UNET)}
    out = {k: v for k, v in unet.items() if k.startswith(("time_embed.", "label_emb.", "input_blocks.", "middle_block."))}
    for k, shape in sd15_controlnet_layout().items():
        k = k[len("control_model."):]
        if k.startswith("input_hint_block."):
            out[k] = (shape[0], hint_channels) + shape[2:] if k == "input_hint_block.0.weight" else shape
    n = 0
    while f"input_blocks.{n}.0.weight" in unet or any(k.startswith(f"input_blocks.{n}.") for k in unet):
        for key in (f"input_blocks.{n}.0.out_layers.3.weight", f"input_blocks.{n}.0.op.weight", f"input_blocks.{n}.0.weight"):
            if key in unet:
                ch = unet[key][0]
        out[f"zero_convs.{n}.0.weight"] = (ch, ch, 1, 1)
        out[f"zero_convs.{n}.0.bias"] = (ch,)
        n += 1
    mid = unet["middle_block.0.out_layers.3.weight"][0]
    out["middle_block_out.0.weight"] = (mid, mid, 1, 1)
    out["middle_block_out.0.bias"] = (mid,)
    return {prefix + k: v for k, v in out.items()}


def tiny_controlnet(family: str = "sd1", seed: int = 3, dtype=torch.float16, prefix: str | None = None,
                    hint_channels: int = 3) -> dict[str, torch.Tensor]:
    """sd1 with the default prefix: the real SD1.5 ControlNet layout, scaled."""
    if family == "sd1" and prefix is None and hint_channels == 3:
        return _fill(sd15_controlnet_layout(), seed, dtype)
    return _fill(controlnet_layout(family, "control_model." if prefix is None else prefix, hint_channels), seed, dtype)


def control_lora_layout() -> dict[str, tuple]:
    pooled = CLIP_G_WIDTH
    out = {}
    for k, shape in real_layout("sdxl_control_lora").items():
        new = list(_scale(shape))
        if k.endswith(".down") and shape[0] == 256:
            new[0] = CONTROL_RANK
        if k.endswith(".up") and shape[1] == 256:
            new[1] = CONTROL_RANK
        if re.search(r"attn2\.to_[kv]\.down$", k):
            new[1] = _CONTEXT["sdxl"]
        if k == "label_emb.0.0.down":
            new[1] = pooled + shape[1] - 1280
        out[k] = tuple(new)
    return out


def tiny_control_lora(seed: int = 4, dtype=torch.float16) -> dict[str, torch.Tensor]:
    sd = _fill(control_lora_layout(), seed, dtype)
    sd["lora_controlnet"] = torch.zeros(0, dtype=dtype)
    return sd


def _adapter_layout(kind: str, channel: int = 32) -> dict[str, tuple]:
    from models.controlnet_models import Adapter, AdapterLight
    with torch.device("meta"):
        if kind == "light":
            net = AdapterLight([channel, channel * 2, channel * 4, channel * 4], 4, 192)
        elif kind == "xl":
            net = Adapter([channel, channel * 2, channel * 4, channel * 4], 2, 768, ksize=1, use_conv=False, xl=True)
        else:  # SD1.x canny-style: 1-channel hint, stride-2 conv downsamplers
            net = Adapter([channel, channel * 2, channel * 4, channel * 4], 2, 64, ksize=1, use_conv=True)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def to_diffusers_t2i(sd: dict) -> dict:
    """LDM T2I-Adapter keys -> the diffusers names (`adapter.body.I.resnets.J.*`)."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"body\.(\d+)\.(.*)", k)
        if m:
            n, rest = int(m.group(1)), m.group(2)
            level, j = divmod(n, 2)
            if rest.startswith("down_opt."):
                raise ValueError("diffusers T2I-Adapters downsample by pooling: no conv downsamplers")
            if rest.startswith("in_conv."):
                k = f"adapter.body.{level}.{rest}"
            else:
                k = f"adapter.body.{level}.resnets.{j}.{rest}"
        else:
            k = "adapter." + k
        out[k] = v
    return out


def tiny_t2i_adapter(kind: str = "full", seed: int = 7, dtype=torch.float16) -> dict[str, torch.Tensor]:
    """kind: full (SD1.x, 1-channel hint), light (SD1.x, 3 channels), xl (SDXL, 3 channels)."""
    return _fill(_adapter_layout(kind), seed, dtype)


def write(path: str, sd: dict) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        torch.save(sd, path)
    return path


def to_diffusers_controlnet(sd: dict, num_res_blocks, transformer_depth, middle) -> dict:
    """A bare LDM ControlNet in the diffusers names (`down_blocks.*`, `controlnet_down_blocks.N`,
    `controlnet_cond_embedding.*`, `controlnet_mid_block`)."""
    from models.lora.keymap import diffusers_to_ldm
    names = {ldm: d for d, ldm in diffusers_to_ldm(num_res_blocks, transformer_depth, [0] * 32, middle).items()}
    hint = {0: "conv_in", 14: "conv_out"}
    out = {}
    for k, v in sd.items():
        m = re.match(r"zero_convs\.(\d+)\.0\.(weight|bias)$", k)
        h = re.match(r"input_hint_block\.(\d+)\.(weight|bias)$", k)
        if m:
            k = f"controlnet_down_blocks.{m.group(1)}.{m.group(2)}"
        elif h:
            n = int(h.group(1))
            k = f"controlnet_cond_embedding.{hint.get(n, f'blocks.{n // 2 - 1}')}.{h.group(2)}"
        elif k.startswith("middle_block_out.0."):
            k = "controlnet_mid_block." + k.rsplit(".", 1)[1]
        else:
            k = names[k]
        out[k] = v
    return out


def tiny_union_controlnet(seed: int = 11, types: int = 8, dtype=torch.float16) -> dict[str, torch.Tensor]:
    """An SDXL ControlNet-Union (xinsir layout: diffusers names plus `task_embedding`,
    `transformer_layes.0.*`, `spatial_ch_projs`, `control_add_embedding`) at tiny width."""
    base = tiny_controlnet("sdxl", prefix="", dtype=dtype)
    sd = to_diffusers_controlnet(base, [2, 2, 2], [0, 0, 2, 2, 10, 10], 10)
    mc, emb = 32, 128
    layout = {"task_embedding": (types, mc), "spatial_ch_projs.weight": (mc, mc), "spatial_ch_projs.bias": (mc,),
              "control_add_embedding.linear_1.weight": (emb, 256 * types), "control_add_embedding.linear_1.bias": (emb,),
              "control_add_embedding.linear_2.weight": (emb, emb), "control_add_embedding.linear_2.bias": (emb,)}
    p = "transformer_layes.0."
    layout.update({p + "attn.in_proj_weight": (3 * mc, mc), p + "attn.in_proj_bias": (3 * mc,),
                   p + "attn.out_proj.weight": (mc, mc), p + "attn.out_proj.bias": (mc,),
                   p + "ln_1.weight": (mc,), p + "ln_1.bias": (mc,), p + "ln_2.weight": (mc,), p + "ln_2.bias": (mc,),
                   p + "mlp.c_fc.weight": (4 * mc, mc), p + "mlp.c_fc.bias": (4 * mc,),
                   p + "mlp.c_proj.weight": (mc, 4 * mc), p + "mlp.c_proj.bias": (mc,)})
    sd.update(_fill(layout, seed, dtype))
    return sd
