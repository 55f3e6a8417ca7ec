"""KSampler and KSamplerAdvanced: denoise a latent with a model and two conditionings."""
from __future__ import annotations

import torch

from models.progress import ProgressBar
from models.sampling import ksampler, preview
from models.sampling.noise import initial_noise
from models.sampling.samplers import SAMPLER_NAMES
from models.sampling.schedulers import SCHEDULER_NAMES

SEED_MAX = 0xFFFFFFFFFFFFFFFF


def fix_empty_latent_channels(model, latent: torch.Tensor) -> torch.Tensor:
    """An all-zero latent with the wrong channel count is widened to the model's channels."""
    channels = model.model.latent_format.latent_channels
    if latent.shape[1] != channels and torch.count_nonzero(latent) == 0:
        reps = [1] * latent.ndim
        reps[1] = -(-channels // latent.shape[1])
        latent = latent.repeat(reps)[:, :channels]
    return latent


def step_callback(model, steps: int, x0_output: dict | None = None):
    """Progress (and a preview, when a preview method is active) after every step; the last
    x0 estimate is kept in x0_output["x0"] when a dict is given."""
    previewer = preview.get_previewer(model.model.latent_format, getattr(model, "taesd_loader", None))
    bar = ProgressBar(steps)

    def callback(step, x0, x, total_steps):
        if x0_output is not None:
            x0_output["x0"] = x0
        bar.update_absolute(step + 1, total_steps, preview.preview_payload(previewer, x0))
    return callback


def common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, denoise=1.0,
                    disable_noise=False, start_step=None, last_step=None, force_full_denoise=False):
    samples = fix_empty_latent_channels(model, latent["samples"])
    if disable_noise:
        noise = torch.zeros(samples.size(), dtype=samples.dtype, layout=samples.layout, device="cpu")
    else:
        noise = initial_noise(samples, seed, latent.get("batch_index"))
    out_samples = ksampler.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, samples,
                                  denoise=denoise, disable_noise=disable_noise, start_step=start_step,
                                  last_step=last_step, force_full_denoise=force_full_denoise,
                                  noise_mask=latent.get("noise_mask"), callback=step_callback(model, steps),
                                  seed=seed)
    out = latent.copy()
    out["samples"] = out_samples
    return (out,)


class KSampler:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model used for denoising the input latent."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                             "tooltip": "The random seed used for creating the noise."}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000,
                              "tooltip": "The number of steps used in the denoising process."}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": "The Classifier-Free Guidance scale balances creativity and adherence to the prompt. Higher values result in images more closely matching the prompt however too high values will negatively impact quality."}),
            "sampler_name": (SAMPLER_NAMES, {"tooltip": "The algorithm used when sampling, this can affect the quality, speed, and style of the generated output."}),
            "scheduler": (SCHEDULER_NAMES, {"tooltip": "The scheduler controls how noise is gradually removed to form the image."}),
            "positive": ("CONDITIONING", {"tooltip": "The conditioning describing the attributes you want to include in the image."}),
            "negative": ("CONDITIONING", {"tooltip": "The conditioning describing the attributes you want to exclude from the image."}),
            "latent_image": ("LATENT", {"tooltip": "The latent image to denoise."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "The amount of denoising applied, lower values will maintain the structure of the initial image allowing for image to image sampling."}),
        }}

    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised latent.",)
    FUNCTION = "sample"
    CATEGORY = "sampling"
    DESCRIPTION = "Uses the provided model, positive and negative conditioning to denoise the latent image."

    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0):
        return common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                               denoise=denoise)


class KSamplerAdvanced:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "add_noise": (["enable", "disable"],),
            "noise_seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
            "sampler_name": (SAMPLER_NAMES,),
            "scheduler": (SCHEDULER_NAMES,),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "latent_image": ("LATENT",),
            "start_at_step": ("INT", {"default": 0, "min": 0, "max": 10000}),
            "end_at_step": ("INT", {"default": 10000, "min": 0, "max": 10000}),
            "return_with_leftover_noise": (["disable", "enable"],),
        }}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "sampling"

    def sample(self, model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
               latent_image, start_at_step, end_at_step, return_with_leftover_noise, denoise=1.0):
        return common_ksampler(model, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
                               latent_image, denoise=denoise, disable_noise=add_noise == "disable",
                               start_step=start_at_step, last_step=end_at_step,
                               force_full_denoise=return_with_leftover_noise != "enable")


NODE_CLASS_MAPPINGS = {"KSampler": KSampler, "KSamplerAdvanced": KSamplerAdvanced}
NODE_DISPLAY_NAME_MAPPINGS = {"KSampler": "KSampler", "KSamplerAdvanced": "KSampler (Advanced)"}
