"""Tiny seeded checkpoints in the key layouts of the real public files.

The key -> shape lists of the real files (../shared/oracle/layouts/) are scaled down: every
channel dimension shrinks by the same factor per component (UNet 320 -> 32, VAE 128 -> 32,
CLIP-L 768 -> 48, OpenCLIP-H 1024 -> 64, OpenCLIP-bigG 1280 -> 80), while key names,
depths, vocabularies, token counts and kernel sizes stay. The UNet's cross-attention width
becomes the tiny text encoders' width, SDXL's ADM input the tiny pooled width + 256 per
size number.

Families without a layout file are derived from the real layouts the way the real files
differ: SD2 = SD1's UNet with linear projections and an OpenCLIP-H text encoder (the bigG
layout with 24 layers); SSD-1B and Segmind Vega = SDXL with transformer blocks removed
(ComfyUI's depth lists for them); inpainting = 9 input channels; the refiner's layout comes
from the UNet class built at the refiner's configuration.
"""
from __future__ import annotations

import json
import math
import os
import re

import torch



def _oracle_dir() -> str:
    """The oracle folder: $COMFYD_ORACLE_DIR, else the workplace's ../shared/oracle, else the copy
    kept in the repository (tests/oracle_data) so a clean clone elsewhere still has it."""
    here = os.path.dirname(os.path.abspath(__file__))
    shared = os.path.join(here, "..", "..", "shared", "oracle")
    return os.environ.get("COMFYD_ORACLE_DIR") or (shared if os.path.isdir(shared) else os.path.join(here, "oracle_data"))


ORACLE_DIR = _oracle_dir()
LAYOUT_DIR = os.path.join(ORACLE_DIR, "layouts")

UNET = "model.diffusion_model."
CLIP_L_WIDTH, CLIP_H_WIDTH, CLIP_G_WIDTH = 48, 64, 80
FAMILIES = ["sd1", "sd1_inpaint", "sd2", "sd2_v", "sd2_inpaint", "sdxl", "sdxl_inpaint", "sdxl_refiner",
            "ssd1b", "segmind_vega"]


def real_layout(name: str) -> dict[str, tuple]:
    with open(os.path.join(LAYOUT_DIR, name + ".json")) as f:
        return {k: tuple(v["shape"]) for k, v in json.load(f)["tensors"].items()}


def _int_keys(name: str) -> set:
    with open(os.path.join(LAYOUT_DIR, name + ".json")) as f:
        return {k for k, v in json.load(f)["tensors"].items() if v["dtype"] == "int64"}


# -- full-size layouts of every family ------------------------------------------------------

def _rename_prefix(layout, old, new):
    return {(new + k[len(old):] if k.startswith(old) else k): v for k, v in layout.items()}


def _openclip_h(sdxl_layout, prefix):
    """OpenCLIP ViT-H/14 text (24 layers, width 1024) from the bigG keys of SDXL."""
    out = {}
    src = "conditioner.embedders.1.model."
    for k, shape in sdxl_layout.items():
        if not k.startswith(src):
            continue
        rest = k[len(src):]
        m = re.match(r"transformer\.resblocks\.(\d+)\.", rest)
        if m and int(m.group(1)) >= 24:
            continue
        out[prefix + rest] = tuple(1024 * (d // 1280) if d % 1280 == 0 else d for d in shape)
    return out


def _prune_transformers(layout, depth_in, depth_out_rev, middle):
    """Keep `depth` transformer blocks per UNet block (ComfyUI's lists: input per res-block,
    output from the last block to the first, middle -1 = res-block only)."""
    n_in = 1 + max(int(k.split(".")[3]) for k in layout if k.startswith(UNET + "input_blocks."))
    res_inputs = sorted({int(k.split(".")[3]) for k in layout if re.match(re.escape(UNET) + r"input_blocks\.\d+\.0\.in_layers", k)})
    keep_in = dict(zip(res_inputs, depth_in))
    keep_out = {n_in - 1 - i: d for i, d in enumerate(depth_out_rev)}
    out = {}
    for k, shape in layout.items():
        m = re.match(re.escape(UNET) + r"(input|output)_blocks\.(\d+)\.1\.transformer_blocks\.(\d+)\.", k)
        if m:
            keep = (keep_in if m.group(1) == "input" else keep_out)[int(m.group(2))]
            if int(m.group(3)) >= keep:
                continue
        if middle == -1 and re.match(re.escape(UNET) + r"middle_block\.[12]\.", k):
            continue
        out[k] = shape
    return out


def _refiner_unet_layout():
    from models.detect import UNetConfig
    from models.unet import UNetModel
    cfg = UNetConfig(4, 4, 384, [2, 2, 2, 2], [1, 2, 4, 4], [0, 0, 4, 4, 4, 4, 0, 0],
                     [0, 0, 0, 4, 4, 4, 4, 4, 4, 0, 0, 0], 4, 1280, True, 2560, num_head_channels=64)
    with torch.device("meta"):
        unet = UNetModel(cfg)
    return {UNET + k: tuple(v.shape) for k, v in unet.state_dict().items()}


def full_layout(family: str) -> dict[str, tuple]:
    base = family.replace("_inpaint", "").replace("_v", "") if family != "segmind_vega" else family
    if base == "sd1":
        layout = real_layout("sd15")
    elif base == "sd2":
        sd15, sdxl = real_layout("sd15"), real_layout("sdxl")
        layout = {}
        for k, shape in sd15.items():
            if k.startswith("cond_stage_model."):
                continue
            if k.startswith(UNET) and re.search(r"\.proj_(in|out)\.weight$", k):
                shape = shape[:2]
            if re.search(r"attn2\.to_[kv]\.weight$", k):
                shape = (shape[0], 1024)
            layout[k] = shape
        layout.update(_openclip_h(sdxl, "cond_stage_model.model."))
    elif base in ("sdxl", "ssd1b", "segmind_vega"):
        layout = real_layout("sdxl")
        if base == "ssd1b":
            layout = _prune_transformers(layout, [0, 0, 2, 2, 4, 4], [0, 0, 0, 1, 1, 2, 10, 4, 4], -1)
        elif base == "segmind_vega":
            layout = _prune_transformers(layout, [0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 1, 2, 2, 2], -1)
    elif base == "sdxl_refiner":
        sdxl = real_layout("sdxl")
        layout = {k: v for k, v in sdxl.items() if k.startswith("first_stage_model.")}
        layout.update(_rename_prefix({k: v for k, v in sdxl.items() if k.startswith("conditioner.embedders.1.")},
                                     "conditioner.embedders.1.", "conditioner.embedders.0."))
        layout.update(_refiner_unet_layout())
    else:
        raise ValueError(f"unknown tiny family {family!r}")
    if family.endswith("_inpaint"):
        w = layout[UNET + "input_blocks.0.0.weight"]
        layout[UNET + "input_blocks.0.0.weight"] = (w[0], 9) + w[2:]
    return layout


# -- scaling down ----------------------------------------------------------------------------

def _component(key: str):
    """(base width, tiny width) of the component a key belongs to."""
    if key.startswith(UNET):
        return None  # depends on the UNet's model_channels
    if key.startswith("first_stage_model."):
        return 128, 32
    if key.startswith(("cond_stage_model.transformer.", "conditioner.embedders.0.transformer.")):
        return 768, CLIP_L_WIDTH
    if key.startswith("cond_stage_model.model."):
        return 1024, CLIP_H_WIDTH
    if key.startswith(("conditioner.embedders.1.model.", "conditioner.embedders.0.model.")):
        return 1280, CLIP_G_WIDTH
    return None


def tiny_layout(family: str) -> dict[str, tuple]:
    layout = full_layout(family)
    mc = layout[UNET + "input_blocks.0.0.weight"][0]
    text = [w for p, w in (("cond_stage_model.transformer.", CLIP_L_WIDTH), ("conditioner.embedders.0.transformer.", CLIP_L_WIDTH),
                           ("cond_stage_model.model.", CLIP_H_WIDTH), ("conditioner.embedders.1.model.", CLIP_G_WIDTH),
                           ("conditioner.embedders.0.model.", CLIP_G_WIDTH)) if any(k.startswith(p) for k in layout)]
    context = sum(text)
    pooled = CLIP_G_WIDTH
    out = {}
    for k, shape in layout.items():
        comp = _component(k)
        if comp is None and k.startswith(UNET):
            base, tiny = mc, 32
        elif comp is None:
            out[k] = shape
            continue
        else:
            base, tiny = comp
        new = [d // base * tiny if d % base == 0 else d for d in shape]
        if k.startswith(UNET) and re.search(r"attn2\.to_[kv]\.weight$", k):
            new[1] = context
        if k == UNET + "label_emb.0.0.weight":
            new[1] = pooled + shape[1] - 1280  # tiny pooled width + the 256-per-number size embeddings
        out[k] = tuple(new)
    return out


def _value(key, shape, layout, gen):
    last = key.rsplit(".", 1)[-1]
    if key.endswith("position_ids"):
        return torch.arange(shape[-1]).expand(shape).clone()
    if len(shape) == 1 and key.endswith(".weight"):
        return torch.ones(shape)  # norm weights
    if key.endswith(".bias") and len(layout.get(key[:-len("bias")] + "weight", ())) == 1:
        return torch.zeros(shape)  # norm biases
    if last == "logit_scale" or len(shape) == 0:
        return torch.full(shape, math.log(100.0))
    if len(shape) == 1:
        return (torch.rand(shape, generator=gen) * 2 - 1) * 0.02
    if "embedding" in key:
        return (torch.rand(shape, generator=gen) * 2 - 1) * 0.02 * math.sqrt(3)
    fan_in = math.prod(shape[1:])
    return (torch.rand(shape, generator=gen) * 2 - 1) * math.sqrt(3.0 / fan_in)


def tiny_checkpoint(family: str, seed: int = 0, dtype=torch.float16) -> dict[str, torch.Tensor]:
    """A seeded random state dict of the family at tiny widths (floats stored as `dtype`)."""
    layout = tiny_layout(family)
    ints = _int_keys("sd15") | _int_keys("sdxl")
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for k in sorted(layout):
        t = _value(k, layout[k], layout, gen)
        sd[k] = t.long() if k in ints or k.endswith("position_ids") else t.to(dtype)
    if family == "sd2_v":  # ComfyUI's v-prediction test looks at the spread of this bias
        k = UNET + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
        sd[k] = ((torch.rand(sd[k].shape, generator=gen) * 2 - 1) * 0.3).to(dtype)
    return sd


def write_tiny_checkpoint(path: str, family: str, seed: int = 0, dtype=torch.float16) -> str:
    sd = tiny_checkpoint(family, seed, dtype)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith((".safetensors", ".sft")):
        from safetensors.torch import save_file
        save_file(sd, path, metadata={"format": "pt", "tiny_family": family})
    else:
        torch.save({"state_dict": sd}, path)
    return path
