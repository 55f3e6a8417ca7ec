"""The samplers of ComfyUI's nodes_advanced_samplers: LCM with a progressive upscale of the
latent between steps, and the "alternative" Euler CFG++ (the step direction uses the
unconditional estimate in place of the guided one)."""
from __future__ import annotations

import numpy as np
import torch

from models.resize import common_upscale
from models.sampling.k_common import capture_uncond, extra, host_sigmas, step, to_d, unit_batch


@torch.no_grad()
def sample_lcm_upscale(model, x, sigmas, extra_args=None, callback=None, disable=None, total_upscale=2.0,
                       upscale_method="bislerp", upscale_steps=None):
    """LCM whose denoised estimate is enlarged on each of the first steps, reaching total_upscale
    after upscale_steps of them (default: about half the schedule). Fresh noise comes from the
    global generator, which the initial-noise seeding leaves seeded."""
    sigmas = host_sigmas(sigmas)
    extra_args, s_in = extra(extra_args), unit_batch(x)
    if upscale_steps is None:
        upscale_steps = max(len(sigmas) // 2 + 1, 2)
    else:
        upscale_steps = min(upscale_steps + 1, len(sigmas) + 1)
    factors = np.linspace(1.0, total_upscale, upscale_steps)[1:]
    height, width = x.shape[-2], x.shape[-1]
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        step(callback, x, i, sigmas[i], denoised)
        x = denoised
        if i < len(factors):
            x = common_upscale(x, round(width * factors[i]), round(height * factors[i]), upscale_method, "disabled")
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * torch.randn_like(x)
    return x


@torch.no_grad()
def sample_euler_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Euler whose derivative is taken toward denoised - uncond offset: d = (x - uncond) / sigma."""
    sigmas = host_sigmas(sigmas)
    extra_args, uncond = capture_uncond(extra(extra_args))
    s_in = unit_batch(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x - denoised + uncond(), sigmas[i], denoised)
        step(callback, x, i, sigmas[i], denoised)
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x
