"""`comfy.sample` for custom node packs: seeded initial noise and one-call sampling."""
from __future__ import annotations

from models.sampling import ksampler
from models.sampling.noise import initial_noise


def prepare_noise(latent_image, seed, noise_inds=None):
    """The initial noise KSampler draws for `seed` (per batch index when given)."""
    return initial_noise(latent_image, seed, noise_inds)


def fix_empty_latent_channels(model, latent_image):
    from nodes.sampling import fix_empty_latent_channels as fix
    return fix(model, latent_image)


def sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0,
           disable_noise=False, start_step=None, last_step=None, force_full_denoise=False, noise_mask=None,
           sigmas=None, callback=None, disable_pbar=False, seed=None):
    """ComfyUI's callback is callback(step, x0, x, total_steps), as here."""
    return ksampler.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                           denoise=denoise, disable_noise=disable_noise, start_step=start_step,
                           last_step=last_step, force_full_denoise=force_full_denoise, noise_mask=noise_mask,
                           sigmas=sigmas, callback=callback, seed=seed)


def sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent_image, noise_mask=None,
                  callback=None, disable_pbar=False, seed=None):
    guider = ksampler.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider.sample(noise, latent_image, sampler, sigmas, noise_mask, callback, seed)
