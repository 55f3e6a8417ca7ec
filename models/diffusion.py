"""The diffusion model as the sampler sees it (ComfyUI's BaseModel): the UNet plus its noise
schedule, latent format and the inputs built from a conditioning (cross-attention context,
SDXL's ADM vector, inpainting concat channels).

apply_model(x, sigma, **conds) returns the denoised estimate: the input is scaled for the
noise level, the UNet is fed the integer-nearest timestep, and its eps/v prediction is turned
back into x0 by the schedule's parameterisation.
"""
from __future__ import annotations

import math

import torch

from models import compiled, unclip
from models.resize import common_upscale
from models.sampling.conds import Cond, CondCrossAttn, CondNoiseShape, repeat_to_batch_size
from models.sampling.model_sampling import DiscreteSchedule
from models.unet import timestep_embedding

# "zero" in pixel space expressed in SD's latent space: what an inpainting UNet sees as masked image
BLANK_INPAINT_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)


def _embed(value: float) -> torch.Tensor:
    return timestep_embedding(torch.Tensor([value]), 256)


def sdxl_adm(pooled, width, height, crop_w=0, crop_h=0, target_width=None, target_height=None) -> torch.Tensor:
    """SDXL base: pooled CLIP-G output + 256-dim embeddings of the size conditioning (2816)."""
    target_width = width if target_width is None else target_width
    target_height = height if target_height is None else target_height
    parts = [_embed(v) for v in (height, width, crop_h, crop_w, target_height, target_width)]
    flat = torch.flatten(torch.cat(parts)).unsqueeze(0).repeat(pooled.shape[0], 1)
    return torch.cat((pooled.to(flat.device), flat), dim=1)


def refiner_adm(pooled, width, height, crop_w=0, crop_h=0, aesthetic_score=6.0) -> torch.Tensor:
    """SDXL refiner: pooled output + size, crop and aesthetic score embeddings (2560)."""
    parts = [_embed(v) for v in (height, width, crop_h, crop_w, aesthetic_score)]
    flat = torch.flatten(torch.cat(parts)).unsqueeze(0).repeat(pooled.shape[0], 1)
    return torch.cat((pooled.to(flat.device), flat), dim=1)


class DiffusionModel(torch.nn.Module):
    """kind: "sd1", "sd2", "sdxl" or "sdxl_refiner"; inpaint: the UNet takes 9 channels."""

    def __init__(self, unet: torch.nn.Module, kind: str, latent_format, prediction: str = "eps",
                 zsnr: bool = False, inpaint: bool = False, compute_dtype: torch.dtype | None = None):
        super().__init__()
        self.diffusion_model = unet
        self.kind = kind
        self.latent_format = latent_format
        self.model_sampling = DiscreteSchedule(prediction=prediction, zsnr=zsnr)
        self.inpaint = inpaint
        self.compute_dtype = compute_dtype
        self.memory_usage_factor = 2.0 if kind.startswith("sdxl") else 1.0

    # -- inputs built from a conditioning entry --------------------------------------------
    def encode_adm(self, **kw):
        pooled = kw.get("pooled_output")
        if self.kind == "sd21_unclip":
            return unclip.sd21_unclip_adm(self, kw)
        if "unclip_conditioning" in kw and self.kind in ("sdxl", "sdxl_refiner"):  # revision
            pooled = unclip.revision_pooled(self, kw)
        if self.kind == "sdxl":
            return sdxl_adm(pooled, kw.get("width", 768), kw.get("height", 768), kw.get("crop_w", 0),
                            kw.get("crop_h", 0), kw.get("target_width"), kw.get("target_height"))
        if self.kind == "sdxl_refiner":
            default_score = 2.5 if kw.get("prompt_type", "") == "negative" else 6.0
            return refiner_adm(pooled, kw.get("width", 768), kw.get("height", 768), kw.get("crop_w", 0),
                               kw.get("crop_h", 0), kw.get("aesthetic_score", default_score))
        return None

    def concat_cond(self, **kw):
        """Inpainting UNets get the mask and the masked image's latent as 5 extra channels."""
        if not self.inpaint:
            return None
        noise, device = kw["noise"], kw["device"]
        mask = kw.get("concat_mask", kw.get("denoise_mask"))
        image = kw.get("concat_latent_image")
        image = kw.get("latent_image") if image is None else self.latent_format.process_in(image)
        if image is not None and image.shape[1:] != noise.shape[1:]:
            image = common_upscale(image, noise.shape[-1], noise.shape[-2], "bilinear", "center")
        if mask is None:
            blank = torch.ones_like(noise)
            for c, v in enumerate(BLANK_INPAINT_LATENT):
                blank[:, c] *= v
            return torch.cat([torch.ones_like(noise)[:, :1], blank], dim=1)
        image = repeat_to_batch_size(image, noise.shape[0])
        if mask.ndim == noise.ndim:
            mask = mask[:, :1]
        mask = mask.reshape((-1, 1) + tuple(mask.shape[-2:]))
        if mask.shape[-2:] != noise.shape[-2:]:
            mask = common_upscale(mask, noise.shape[-1], noise.shape[-2], "bilinear", "center")
        mask = repeat_to_batch_size(mask.round(), noise.shape[0])
        return torch.cat([mask.to(device), image.to(device)], dim=1)

    def extra_conds(self, **kw) -> dict:
        out = {}
        concat = self.concat_cond(**kw)
        if concat is not None:
            out["c_concat"] = CondNoiseShape(concat)
        adm = self.encode_adm(**kw)
        if adm is not None:
            out["y"] = Cond(adm)
        if kw.get("cross_attn") is not None:
            out["c_crossattn"] = CondCrossAttn(kw["cross_attn"])
        if kw.get("cross_attn_controlnet") is not None:
            out["crossattn_controlnet"] = CondCrossAttn(kw["cross_attn_controlnet"])
        if kw.get("noise_concat") is not None:
            out["c_concat"] = CondNoiseShape(kw["noise_concat"])
        return out

    # -- the forward used by the samplers ---------------------------------------------------
    def dtype(self) -> torch.dtype:
        if self.compute_dtype is not None:
            return self.compute_dtype
        return next(self.diffusion_model.parameters()).dtype

    def apply_model(self, x, sigma, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                    **extra):
        ms = self.model_sampling
        xc = ms.calculate_input(sigma, x)
        if c_concat is not None:
            xc = torch.cat([xc, c_concat.to(xc.device, xc.dtype)], dim=1)
        dtype = self.dtype()
        xc = xc.to(dtype)
        t = ms.timestep(sigma).float()
        context = c_crossattn.to(xc.device, dtype) if c_crossattn is not None else None
        extra = {k: (v.to(xc.device, dtype) if torch.is_tensor(v) else v) for k, v in extra.items()}
        if compiled.active():  # --compile: a compiled graph per shape, eager where it cannot apply
            out = compiled.run_unet(self.diffusion_model, xc, t, context=context, control=control,
                                    transformer_options=transformer_options, **extra)
        else:
            out = self.diffusion_model(xc, t, context=context, control=control,
                                       transformer_options=transformer_options or {}, **extra)
        return ms.calculate_denoised(sigma, out.float(), x)

    def memory_required(self, shape) -> float:
        """A rough working-memory estimate for one UNet call on a batch of this shape (bytes)."""
        area = shape[0] * math.prod(shape[2:])
        return area * 0.15 * self.memory_usage_factor * 1024 * 1024

    def process_latent_in(self, latent):
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent):
        return self.latent_format.process_out(latent)
