"""A full checkpoint split into its parts, and the networks built from them.

Prefixes of the public SD file layouts (COVERAGE.md §3.2):
  UNet           model.diffusion_model.
  VAE            first_stage_model.
  text encoders  SD1   cond_stage_model.transformer.      CLIP-L (HF layout)  -> "clip_l"
                 SD2   cond_stage_model.model.            OpenCLIP ViT-H      -> "clip_h"
                 SDXL  conditioner.embedders.0.transformer. CLIP-L (HF)       -> "clip_l"
                       conditioner.embedders.1.model.     OpenCLIP ViT-bigG   -> "clip_g"
                 refiner conditioner.embedders.0.model.   OpenCLIP ViT-bigG   -> "clip_g"

Text encoders are handed over as state dicts in the Hugging Face CLIPTextModel layout
(keys `text_model.embeddings.token_embedding.weight`, `text_model.encoder.layers.N.
self_attn.q_proj.weight`, ..., `text_model.final_layer_norm.weight`, and for OpenCLIP
files `text_projection.weight` (transposed to nn.Linear's [out, in]) and `logit_scale`):
OpenCLIP keys are converted here, so the text-encoder code sees one layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from models import latent_formats
from models.detect import SDXL_LIKE, Detection, UnknownArchitectureError, detect_checkpoint, describe_keys
from models.clip_text import openclip_layer_to_hf
from models.diffusion import DiffusionModel
from models.ops import load_into
from models.state_dict import ModelFileError, TensorSource, as_source
from models.unet import UNetModel
from models.vae import VAE, build_vae


@dataclass
class LoadedCheckpoint:
    detection: Detection
    model: DiffusionModel | None = None
    vae: VAE | None = None
    text_encoders: dict = field(default_factory=dict)  # "clip_l" / "clip_h" / "clip_g" -> HF-layout state dict


def openclip_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenCLIP text-transformer keys (prefix already stripped) -> HF CLIPTextModel keys."""
    renames = {"positional_embedding": "text_model.embeddings.position_embedding.weight",
               "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
               "ln_final.weight": "text_model.final_layer_norm.weight",
               "ln_final.bias": "text_model.final_layer_norm.bias",
               "logit_scale": "logit_scale"}
    out = {}
    for k, v in sd.items():
        if k in renames:
            out[renames[k]] = v
        elif k == "text_projection":  # stored [in, out] for x @ P
            out["text_projection.weight"] = v.transpose(0, 1).contiguous()
        elif k.startswith("transformer.resblocks."):
            n, rest = k[len("transformer.resblocks."):].split(".", 1)
            out.update(openclip_layer_to_hf(rest, v, f"text_model.encoder.layers.{n}."))
        else:
            out[k] = v
    return out


def hf_to_openclip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of openclip_to_hf (for saving checkpoints in the public layout)."""
    renames = {"text_model.embeddings.position_embedding.weight": "positional_embedding",
               "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
               "text_model.final_layer_norm.weight": "ln_final.weight",
               "text_model.final_layer_norm.bias": "ln_final.bias",
               "logit_scale": "logit_scale"}
    layer_parts = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}
    out, qkv = {}, {}
    for k, v in sd.items():
        if k in renames:
            out[renames[k]] = v
        elif k == "text_projection.weight":
            out["text_projection"] = v.transpose(0, 1).contiguous()
        elif k.startswith("text_model.encoder.layers."):
            n, rest = k[len("text_model.encoder.layers."):].split(".", 1)
            part, suffix = rest.rsplit(".", 1)
            if part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((n, suffix), {})[part[-6]] = v
            else:
                out[f"transformer.resblocks.{n}.{layer_parts.get(part, part)}.{suffix}"] = v
        elif k != "text_model.embeddings.position_ids":
            out[k] = v
    for (n, suffix), parts in qkv.items():
        out[f"transformer.resblocks.{n}.attn.in_proj_{suffix}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def checkpoint_state_dict(model: DiffusionModel, text_encoders: dict | None = None, vae: VAE | None = None) -> dict:
    """A full checkpoint in the family's public layout (CheckpointSave): the UNet under
    model.diffusion_model., the VAE under first_stage_model., the text encoders (HF-layout
    state dicts by name, as handed over by load_checkpoint) under their family prefixes."""
    det = model.detection
    out = {"model.diffusion_model." + k: v for k, v in model.diffusion_model.state_dict().items()}
    if det.model_type == "v_prediction" and det.family != "sd2":
        out["v_pred"] = torch.tensor([])  # how SDXL-type files mark v-prediction
        if det.zsnr:
            out["ztsnr"] = torch.tensor([])
    if vae is not None:
        out.update({"first_stage_model." + k: v for k, v in vae.first_stage_model.state_dict().items()})
    prefixes = {"sd1": {"clip_l": ("cond_stage_model.transformer.", "hf")},
                "sd2": {"clip_h": ("cond_stage_model.model.", "openclip")},
                "sdxl_refiner": {"clip_g": ("conditioner.embedders.0.model.", "openclip")}}
    sdxl = {"clip_l": ("conditioner.embedders.0.transformer.", "hf"), "clip_g": ("conditioner.embedders.1.model.", "openclip")}
    for name, sd in (text_encoders or {}).items():
        where = prefixes.get(det.family, sdxl).get(name)
        if where is None:
            raise ValueError(f"a {det.title} checkpoint has no place for a {name} text encoder")
        prefix, layout = where
        if layout == "openclip":
            sd = hf_to_openclip(sd)
        else:
            sd = {k: v for k, v in sd.items() if k not in ("text_projection.weight", "logit_scale")}
            if det.family != "sd1":
                sd["text_model.embeddings.position_ids"] = torch.arange(77).expand((1, -1))
        out.update({prefix + k: v for k, v in sd.items()})
    return out


def text_encoder_state_dict(src: TensorSource, prefix: str, layout: str, dtype=None, device=None) -> dict:
    keys = src.with_prefix(prefix)
    sd = src.read(keys, strip=prefix, dtype=dtype, device=device)
    if layout == "openclip":
        return openclip_to_hf(sd)
    # Older SD1 files lack the `text_model.` level; some store position_ids as floats.
    sd = {(k if k.startswith("text_model.") or k in ("text_projection.weight", "logit_scale") else "text_model." + k): v
          for k, v in sd.items()}
    ids = sd.get("text_model.embeddings.position_ids")
    if ids is not None and ids.is_floating_point():
        sd["text_model.embeddings.position_ids"] = ids.round().long()
    return sd


def build_unet(src: TensorSource, detection: Detection, device="cpu", weight_dtype=torch.float32) -> UNetModel:
    with torch.device("meta"):
        unet = UNetModel(detection.unet)
    prefix = detection.unet_prefix
    own = unet.state_dict().keys()
    keys = [k for k in src.keys() if k.startswith(prefix) and k[len(prefix):] in own]
    return load_into(unet, src.read(keys, strip=prefix, dtype=weight_dtype, device=device),
                     what=f"{detection.title} UNet").eval()


def build_diffusion_model(src, detection: Detection | None = None, device="cpu",
                          compute_dtype=torch.float32, weight_dtype=None) -> DiffusionModel:
    src = as_source(src)
    detection = detection or detect_checkpoint(src)
    if detection.variant == "instructpix2pix":
        raise UnknownArchitectureError(f"{detection.title} InstructPix2Pix checkpoints are detected but not supported yet")
    unet = build_unet(src, detection, device, weight_dtype or compute_dtype)
    kind = "sdxl" if detection.family in SDXL_LIKE else detection.family
    model = DiffusionModel(unet, kind, getattr(latent_formats, detection.latent_format)(), detection.model_type,
                           zsnr=detection.zsnr, inpaint=detection.variant == "inpaint", compute_dtype=compute_dtype)
    model.detection = detection
    return model


def load_checkpoint(source, device="cpu", compute_dtype=torch.float32, weight_dtype=None,
                    output_model=True, output_vae=True, output_clip=True, text_dtype=None) -> LoadedCheckpoint:
    """Open a checkpoint (path, state dict or TensorSource), detect it and build its parts.

    weight_dtype: dtype the UNet/VAE weights are kept in (default: compute_dtype; fp16
    halves the memory at identical numbers on the CPU, see models/ops.py).
    text_dtype: dtype of the text-encoder tensors handed over (default: as stored).
    """
    src = as_source(source)
    try:
        detection = detect_checkpoint(src)
        if detection.unet_prefix != "model.diffusion_model.":
            raise UnknownArchitectureError("this file holds a bare UNet without VAE or text encoders: "
                                           "load it with the diffusion-model (UNET) loader")
        out = LoadedCheckpoint(detection)
        if output_model:
            out.model = build_diffusion_model(src, detection, device, compute_dtype, weight_dtype)
        if output_vae:
            if detection.vae_prefix is None:
                raise UnknownArchitectureError(f"{detection.title} checkpoint without VAE weights (first_stage_model.*)")
            out.vae = build_vae(src, detection.vae_prefix, device, weight_dtype or compute_dtype, compute_dtype)
        if output_clip:
            out.text_encoders = {name: text_encoder_state_dict(src, prefix, layout, text_dtype, device)
                                 for name, (prefix, layout) in detection.text_encoders.items()}
        return out
    finally:
        if src is not source:
            src.close()


def load_diffusion_model(source, device="cpu", compute_dtype=torch.float32, weight_dtype=None) -> DiffusionModel:
    """A UNet alone (UNETLoader): a bare `input_blocks...` file, a diffusers-format UNet, or
    the UNet of a checkpoint."""
    from models.diffusers_unet import LDMView, is_diffusers_unet
    src = as_source(source)
    try:
        view = LDMView(src) if is_diffusers_unet(src) else src
        return build_diffusion_model(view, None, device, compute_dtype, weight_dtype)
    finally:
        if src is not source:
            src.close()


def load_vae(source, device="cpu", dtype=torch.float32) -> VAE:
    """A stand-alone VAE file (VAELoader), or the VAE inside a checkpoint."""
    src = as_source(source)
    try:
        prefix = "first_stage_model." if "first_stage_model.decoder.conv_in.weight" in src else ""
        try:
            return build_vae(src, prefix, device, dtype, dtype)
        except ValueError as e:
            raise ModelFileError(f"not a VAE: {e} ({describe_keys(src)})") from e
    finally:
        if src is not source:
            src.close()
