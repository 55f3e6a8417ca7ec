"""Model patch nodes of ComfyUI's nodes_model_advanced: ModelSamplingDiscrete,
ModelSamplingContinuousEDM / ModelSamplingContinuousV and RescaleCFG."""
from __future__ import annotations

import torch

from models.latent_formats import SDXLPlayground25
from models.sampling.model_sampling import ContinuousEDMSchedule, ContinuousVSchedule, DiscreteSchedule


class ModelSamplingDiscrete:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",),
                             "sampling": (["eps", "v_prediction", "lcm", "x0", "img_to_img"],),
                             "zsnr": ("BOOLEAN", {"default": False})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "advanced/model"

    def patch(self, model, sampling, zsnr):
        m = model.clone()
        # LCM samples on the 50-step distilled grid of the same schedule
        schedule = DiscreteSchedule(prediction=sampling, zsnr=zsnr,
                                    distilled_steps=50 if sampling == "lcm" else None)
        m.add_object_patch("model_sampling", schedule)
        return (m,)


def _sigma_input(default: float):
    return ("FLOAT", {"default": default, "min": 0.0, "max": 1000.0, "step": 0.001, "round": False})


class ModelSamplingContinuousEDM:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",),
                             "sampling": (["v_prediction", "edm", "edm_playground_v2.5", "eps", "cosmos_rflow"],),
                             "sigma_max": _sigma_input(120.0),
                             "sigma_min": _sigma_input(0.002)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "advanced/model"

    def patch(self, model, sampling, sigma_max, sigma_min):
        if sampling == "cosmos_rflow":
            raise ValueError("cosmos_rflow sampling is for Cosmos models, which comfyd does not run")
        m = model.clone()
        prediction = "edm" if sampling.startswith("edm") else sampling
        sigma_data = 0.5 if prediction == "edm" else 1.0
        m.add_object_patch("model_sampling", ContinuousEDMSchedule(prediction, sigma_min, sigma_max, sigma_data))
        if sampling == "edm_playground_v2.5":
            m.add_object_patch("latent_format", SDXLPlayground25())
        return (m,)


class ModelSamplingContinuousV:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",),
                             "sampling": (["v_prediction"],),
                             "sigma_max": _sigma_input(500.0),
                             "sigma_min": _sigma_input(0.03)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "advanced/model"

    def patch(self, model, sampling, sigma_max, sigma_min):
        m = model.clone()
        m.add_object_patch("model_sampling", ContinuousVSchedule(sampling, sigma_min, sigma_max, 1.0))
        return (m,)


def rescale_cfg_function(multiplier: float):
    """CFG computed on the v-prediction and rescaled towards the conditional's std (Lin et al. 2023)."""
    def rescale(args):
        cond, uncond, scale, x_orig = args["cond"], args["uncond"], args["cond_scale"], args["input"]
        sigma = args["sigma"].view(args["sigma"].shape[:1] + (1,) * (cond.ndim - 1))
        x = x_orig / (sigma * sigma + 1.0)
        v_cond = ((x - (x_orig - cond)) * (sigma ** 2 + 1.0) ** 0.5) / sigma
        v_uncond = ((x - (x_orig - uncond)) * (sigma ** 2 + 1.0) ** 0.5) / sigma
        v_cfg = v_uncond + scale * (v_cond - v_uncond)
        rescaled = v_cfg * (torch.std(v_cond, dim=(1, 2, 3), keepdim=True) / torch.std(v_cfg, dim=(1, 2, 3), keepdim=True))
        final = multiplier * rescaled + (1.0 - multiplier) * v_cfg
        return x_orig - (x - final * sigma / (sigma * sigma + 1.0) ** 0.5)
    return rescale


class RescaleCFG:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",),
                             "multiplier": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.01})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "advanced/model"

    def patch(self, model, multiplier):
        m = model.clone()
        m.set_model_sampler_cfg_function(rescale_cfg_function(multiplier))
        return (m,)


NODE_CLASS_MAPPINGS = {"ModelSamplingDiscrete": ModelSamplingDiscrete, "RescaleCFG": RescaleCFG,
                       "ModelSamplingContinuousEDM": ModelSamplingContinuousEDM,
                       "ModelSamplingContinuousV": ModelSamplingContinuousV}
