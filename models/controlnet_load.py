"""Reading a controlnet-folder file into a CONTROL_NET (COVERAGE.md §3.7), by its keys:

  `lora_controlnet`                            Control-LoRA (built on the base UNet at sampling)
  `controlnet_cond_embedding.conv_in.weight`   diffusers ControlNet (renamed to the LDM keys)
  `control_model.zero_convs.0.0.weight`        LDM ControlNet with the `control_model.` prefix;
                                               with a `difference` key, a difference ControlNet
                                               whose weights are added to the base UNet's
  `zero_convs.0.0.weight`                      LDM ControlNet without prefix
  otherwise                                    T2I-Adapter: light (`body.0.in_conv.weight`),
                                               full (`conv_in.weight`), diffusers (`adapter.body.*`)

The network's shape is read from the shapes, like a UNet's (models/detect.py).
"""
from __future__ import annotations

import dataclasses
import logging
import os

import torch

from models.controlnet import ControlLora, ControlNet, T2IAdapter, wants_global_average_pooling
from models.controlnet_models import Adapter, AdapterLight, ControlNetModel
from models.detect import UnknownArchitectureError, describe_keys, detect_checkpoint, detect_unet_config
from models.lora.keymap import diffusers_to_ldm
from models.ops import load_into
from models.state_dict import DictSource, ModelFileError, TensorSource, as_source

log = logging.getLogger(__name__)

PTH_PREFIX = "control_model."


def _count(keys, pattern: str) -> int:
    n = 0
    while any(k.startswith(pattern.format(n)) for k in keys):
        n += 1
    return n


def controlnet_config(src: TensorSource, prefix: str):
    """The UNet config of a ControlNet's encoder. Known families get their head layout;
    others (reduced ControlNets) are taken as they are, with SD2/SDXL-style 64-channel heads
    when the projections are linear and SD1's 8 heads otherwise."""
    try:
        return dataclasses.replace(detect_checkpoint(src, prefix).unet)
    except UnknownArchitectureError:
        cfg = detect_unet_config(src, prefix)
        if cfg is None:
            raise
        if cfg.use_linear_in_transformer:
            cfg.num_head_channels = 64
        else:
            cfg.num_heads = 8
        return cfg


def _diffusers_to_ldm_controlnet(src: TensorSource) -> DictSource:
    keys = src.keys()
    levels = _count(keys, "down_blocks.{}.")
    num_res = [_count(keys, f"down_blocks.{x}.resnets.{{}}.") for x in range(levels)]
    depths = [_count(keys, f"down_blocks.{x}.attentions.{i}.transformer_blocks.{{}}.")
              for x in range(levels) for i in range(num_res[x])]
    middle = _count(keys, "mid_block.attentions.0.transformer_blocks.{}.")
    if middle == 0 and not any(k.startswith("mid_block.attentions.") for k in keys):
        middle = -1
    names = diffusers_to_ldm(num_res, depths, [0] * (sum(num_res) + levels), middle)
    names.update({"controlnet_mid_block.weight": "middle_block_out.0.weight",
                  "controlnet_mid_block.bias": "middle_block_out.0.bias"})
    for n in range(_count(keys, "controlnet_down_blocks.{}.")):
        for s in ("weight", "bias"):
            names[f"controlnet_down_blocks.{n}.{s}"] = f"zero_convs.{n}.0.{s}"
    embedding_blocks = _count(keys, "controlnet_cond_embedding.blocks.{}.")
    for s in ("weight", "bias"):
        names[f"controlnet_cond_embedding.conv_in.{s}"] = f"input_hint_block.0.{s}"
        for i in range(embedding_blocks):
            names[f"controlnet_cond_embedding.blocks.{i}.{s}"] = f"input_hint_block.{(i + 1) * 2}.{s}"
        names[f"controlnet_cond_embedding.conv_out.{s}"] = f"input_hint_block.{(embedding_blocks + 1) * 2}.{s}"
    out = {names[k]: src.get(k) for k in keys if k in names}
    if "control_add_embedding.linear_1.bias" in src:  # ControlNet-Union: its own parts keep their names
        for k in keys:
            if k not in names:
                out[k.replace(".attn.in_proj_", ".attn.in_proj.")] = src.get(k)
    left = [k for k in keys if k not in names and k.replace(".attn.in_proj_", ".attn.in_proj.") not in out]
    if left:
        log.warning("diffusers ControlNet: %d keys not used (e.g. %s)", len(left), ", ".join(left[:3]))
    return DictSource(out)


def _build_controlnet(src: TensorSource, prefix: str, model=None, global_average_pooling=False,
                      compute_dtype=torch.float32, weight_dtype=None) -> ControlNet:
    cfg = controlnet_config(src, prefix)
    hint_channels = src.shape(prefix + "input_hint_block.0.weight")[1]
    union = src.shape(prefix + "task_embedding")[0] if prefix + "task_embedding" in src else None
    with torch.device("meta"):
        net = ControlNetModel(cfg, hint_channels, union_types=union)
    own = net.state_dict().keys()
    keys = [k for k in src.keys() if k.startswith(prefix) and k[len(prefix):] in own]
    sd = src.read(keys, strip=prefix)
    if prefix == PTH_PREFIX and "difference" in src:
        if model is None:
            log.warning("a difference ControlNet loaded without a model (use DiffControlNetLoader): "
                        "it will very likely not work")
        else:
            if hasattr(model, "prepare_for_sampling"):
                model.prepare_for_sampling()  # the base weights as sampling will see them (LoRAs applied)
            base = model.model_state_dict()
            for k in sd:
                if k in base:  # added in the file's dtype, as ComfyUI does
                    sd[k] = sd[k] + base[k].to(sd[k].dtype)
    if weight_dtype is not None:
        sd = {k: v.to(weight_dtype) if v.is_floating_point() else v for k, v in sd.items()}
    load_into(net, sd, strict=True, what="ControlNet")
    return ControlNet(net.eval(), global_average_pooling=global_average_pooling, compute_dtype=compute_dtype)


_DIFFUSERS_T2I = [(f"adapter.body.{i}.resnets.{j}.", f"body.{i * 2 + j}.") for i in range(4) for j in range(2)] + \
                 [(f"adapter.body.{i}.", f"body.{i * 2}.") for i in range(4)] + [("adapter.", "")]


def _t2i_adapter(src: TensorSource) -> T2IAdapter | None:
    keys = src.keys()
    if "adapter.body.0.resnets.0.block1.weight" in src:
        def rename(k):
            for old, new in _DIFFUSERS_T2I:
                if k.startswith(old):
                    return new + k[len(old):]
            return k
        src = DictSource({rename(k): src.get(k) for k in keys})
        keys = src.keys()
    if "body.0.in_conv.weight" in src:
        levels = _count(keys, "body.{}.")
        channels = [src.shape(f"body.{i}.out_conv.weight")[0] for i in range(levels)]
        inter = [src.shape(f"body.{i}.in_conv.weight")[0] for i in range(levels)]
        net = AdapterLight(channels, _count(keys, "body.0.body.{}."), src.shape("body.0.in_conv.weight")[1], inter)
    elif "conv_in.weight" in src and "body.0.block2.weight" in src:
        channel, cin = src.shape("conv_in.weight")[:2]
        blocks = _count(keys, "body.{}.")
        if blocks % 4:
            raise ModelFileError(f"T2I-Adapter with {blocks} body blocks, not 4 levels of equal depth")
        net = Adapter([channel, channel * 2, channel * 4, channel * 4], blocks // 4, cin,
                      ksize=src.shape("body.0.block2.weight")[2], sk=True,
                      use_conv=any(k.endswith("down_opt.op.weight") for k in keys), xl=cin in (256, 768))
    elif any(k.startswith("backbone.") for k in keys):
        raise ModelFileError("Stable Cascade ControlNets are not supported")
    else:
        return None
    load_into(net, src.read(keys), strict=True, what="T2I-Adapter")
    return T2IAdapter(net.eval(), net.input_channels)


def load_controlnet_state_dict(source, model=None, global_average_pooling=False, compute_dtype=torch.float32,
                               weight_dtype=None):
    """A CONTROL_NET from a state dict / TensorSource. `model` (a ModelPatcher) is needed only
    for difference ControlNets."""
    src = as_source(source)
    keys = src.keys()
    if "lora_controlnet" in src:
        weights = {k: src.get(k) for k in keys if k != "lora_controlnet"}
        if "input_hint_block.0.weight" not in weights:
            raise ModelFileError("Control-LoRA file without a hint block (input_hint_block.0.weight)")
        return ControlLora(weights, global_average_pooling=global_average_pooling)
    if any(k.startswith(("controlnet_blocks.", "after_proj_list.", "controlnet_x_embedder.")) for k in keys):
        raise ModelFileError("DiT ControlNets (SD3, Flux, HunyuanDiT, Qwen) are not supported yet")
    if "controlnet_cond_embedding.conv_in.weight" in src:
        src, prefix = _diffusers_to_ldm_controlnet(src), ""
    elif PTH_PREFIX + "zero_convs.0.0.weight" in src:
        prefix = PTH_PREFIX
    elif "zero_convs.0.0.weight" in src:
        prefix = ""
    else:
        net = _t2i_adapter(src)
        if net is None:
            raise ModelFileError(f"not a ControlNet, Control-LoRA or T2I-Adapter ({describe_keys(src)})")
        return net
    try:
        return _build_controlnet(src, prefix, model, global_average_pooling, compute_dtype, weight_dtype)
    except ModelFileError:
        raise
    except (UnknownArchitectureError, ValueError) as e:
        raise ModelFileError(f"unsupported ControlNet: {e}") from e
    except KeyError as e:
        raise ModelFileError(f"incomplete ControlNet: tensor {e} is missing") from e


def load_controlnet(path: str, model=None, global_average_pooling: bool | None = None,
                    compute_dtype=torch.float32, weight_dtype=None):
    """A CONTROL_NET from a file; `_shuffle` files get global average pooling."""
    if global_average_pooling is None:
        global_average_pooling = wants_global_average_pooling(path)
    src = as_source(path)
    try:
        return load_controlnet_state_dict(src, model, global_average_pooling, compute_dtype, weight_dtype)
    except ModelFileError as e:
        raise ModelFileError(f"{os.path.basename(path)}: {e}") from e
    finally:
        src.close()
