"""Tiny seeded CLIP vision files, T2I style models and an SD2.1-unCLIP checkpoint in the real
key layouts.

The CLIP vision layouts come from the real clip_vision_g.safetensors key list
(../shared/oracle/layouts/clip_vision_g.json, HF layout, 48 layers): ViT-H/14 and ViT-L/14 are
the same keys with 32 / 24 layers. Depth, patch size and the 257 positions stay (they decide the
tower and the preprocessing); the widths shrink. The tiny bigG projects to 80, the tiny SDXL
checkpoints' pooled width, so revision works on them; the tiny ViT-H projects to 64 and the tiny
SD2.1-unCLIP-H checkpoint takes 2 x 64 ADM inputs.
"""
from __future__ import annotations

import math
import os
import re

import torch

from tiny_checkpoints import UNET, real_layout, tiny_checkpoint

# kind -> (layers, width, ffn, projection)
TINY_VISION = {"vit_bigg": (48, 64, 256, 80), "vit_h": (32, 48, 192, 64), "vit_l": (24, 32, 128, 48)}
REAL = {"vit_bigg": (48, 1664, 8192, 1280), "vit_h": (32, 1280, 5120, 1024), "vit_l": (24, 1024, 4096, 768)}


def vision_layout(kind: str, tiny: bool = True) -> dict[str, tuple]:
    layers, width, ffn, proj = (TINY_VISION if tiny else REAL)[kind]
    out = {}
    for k, shape in real_layout("clip_vision_g").items():
        m = re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k)
        if m and int(m.group(1)) >= layers:
            continue
        dims = {1664: width, 8192: ffn, 1280: proj}
        out[k] = tuple(dims.get(d, d) for d in shape)
    return out


def _fill(layout: dict, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for k in sorted(layout):
        shape = layout[k]
        r = torch.rand(shape, generator=gen) * 2 - 1
        if re.search(r"(norm\d?|layrnorm|layernorm|ln_\w+)\.weight$", k):
            sd[k] = 1 + 0.2 * r
        elif len(shape) == 1 and k.endswith("bias"):
            sd[k] = 0.05 * r
        elif "embedding" in k and len(shape) <= 2:
            sd[k] = 0.5 * r
        else:
            sd[k] = r * math.sqrt(3.0 / math.prod(shape[1:]))
    return sd


def tiny_vision(kind: str = "vit_bigg", seed: int = 0, dtype=torch.float16) -> dict[str, torch.Tensor]:
    """HF layout (vision_model.*, visual_projection.weight), as clip_vision_g.safetensors."""
    return {k: v.to(dtype) for k, v in _fill(vision_layout(kind), seed).items()}


_TOP = {"vision_model.embeddings.class_embedding": "class_embedding",
        "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
        "vision_model.embeddings.position_embedding.weight": "positional_embedding",
        "vision_model.pre_layrnorm.weight": "ln_pre.weight", "vision_model.pre_layrnorm.bias": "ln_pre.bias",
        "vision_model.post_layernorm.weight": "ln_post.weight", "vision_model.post_layernorm.bias": "ln_post.bias"}
_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
          "self_attn.out_proj": "attn.out_proj"}


def to_openclip(sd: dict[str, torch.Tensor], prefix: str = "visual.") -> dict[str, torch.Tensor]:
    """The same tower in OpenCLIP's layout (fused in_proj, `proj` as [width, dim])."""
    out, qkv = {}, {}
    for k, v in sd.items():
        if k in _TOP:
            out[prefix + _TOP[k]] = v
        elif k == "visual_projection.weight":
            out[prefix + "proj"] = v.t().contiguous()
        else:
            n, rest = k[len("vision_model.encoder.layers."):].split(".", 1)
            part, suffix = rest.rsplit(".", 1)
            if part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((n, suffix), {})[part[-6]] = v
            else:
                out[f"{prefix}transformer.resblocks.{n}.{_LAYER[part]}.{suffix}"] = v
    for (n, suffix), p in qkv.items():
        out[f"{prefix}transformer.resblocks.{n}.attn.in_proj_{suffix}"] = torch.cat([p["q"], p["k"], p["v"]])
    return out


def tiny_style_model(width=32, context=48, layers=3, tokens=8, seed=0) -> dict[str, torch.Tensor]:
    """T2I-Adapter style model layout (t2iadapter_style_sd14v1: width 1024, 768, 3 layers, 8 tokens)."""
    layout = {"style_embedding": (1, tokens, width), "proj": (width, context),
              "ln_pre.weight": (width,), "ln_pre.bias": (width,), "ln_post.weight": (width,), "ln_post.bias": (width,)}
    for i in range(layers):
        p = f"transformer_layes.{i}."
        layout.update({p + "attn.in_proj_weight": (3 * width, width), p + "attn.in_proj_bias": (3 * width,),
                       p + "attn.out_proj.weight": (width, width), p + "attn.out_proj.bias": (width,),
                       p + "ln_1.weight": (width,), p + "ln_1.bias": (width,),
                       p + "ln_2.weight": (width,), p + "ln_2.bias": (width,),
                       p + "mlp.c_fc.weight": (4 * width, width), p + "mlp.c_fc.bias": (4 * width,),
                       p + "mlp.c_proj.weight": (width, 4 * width), p + "mlp.c_proj.bias": (width,)})
    sd = _fill(layout, seed)
    sd["style_embedding"] = sd["style_embedding"] * 0.5
    return sd


def tiny_unclip_checkpoint(seed: int = 0, dtype=torch.float16) -> dict[str, torch.Tensor]:
    """SD2.1-unCLIP-H: the tiny SD2 checkpoint plus the ADM embedding (2 x 64 inputs) and a tiny
    ViT-H/14 vision tower at embedder.model.visual. (OpenCLIP layout, as the real .ckpt)."""
    from models.detect import detect_unet_config
    from models.unet import UNetModel
    sd = tiny_checkpoint("sd2", seed, dtype)
    cfg = detect_unet_config(sd, UNET)
    cfg.adm_in_channels = 2 * TINY_VISION["vit_h"][3]
    cfg.num_head_channels = 64
    with torch.device("meta"):
        unet = UNetModel(cfg)
    gen = torch.Generator().manual_seed(seed + 100)
    for k, v in unet.state_dict().items():
        if k.startswith("label_emb."):
            shape = tuple(v.shape)
            r = torch.rand(shape, generator=gen) * 2 - 1
            sd[UNET + k] = (r * (math.sqrt(3.0 / shape[1]) if len(shape) == 2 else 0.02)).to(dtype)
    sd.update(to_openclip(tiny_vision("vit_h", seed + 1, dtype), "embedder.model.visual."))
    return sd


def save(path: str, sd: dict) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        torch.save({"state_dict": sd}, path)
    return path
