"""Small helpers shared by the samplers (k-diffusion's vocabulary).

A sampler is a plain function `sample_x(model, x, sigmas, extra_args=None, callback=None,
disable=None, **options)`: `model(x, sigma * s_in, **extra_args)` returns the denoised
estimate, `callback({"x", "i", "sigma", "sigma_hat", "denoised"})` reports each step.
This is the signature custom node packs use, so theirs plug in unchanged.

No host-device syncs inside the loop: each sampler takes `host_sigmas(sigmas)` first, so
the per-step control flow (`if sigma_next == 0`, `min`, comparisons) reads CPU float32
values instead of waiting for the GPU each step. The arithmetic stays float32 tensor
arithmetic, and a 0-dim CPU tensor takes part in a CUDA op as a scalar, with no transfer;
a CPU value with dimensions goes over with `on_device` (an asynchronous copy).
"""
from __future__ import annotations

import torch


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v[(...,) + (None,) * (ndim - v.ndim)]


def host_sigmas(sigmas) -> torch.Tensor:
    """The schedule on the host, for the per-step control flow (one copy before the loop)."""
    if not isinstance(sigmas, torch.Tensor):
        return torch.as_tensor(sigmas)
    return sigmas.detach().to("cpu")


def on_device(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A host tensor on like's device, copied without making the host wait for the GPU."""
    return like.new_empty(v.shape, dtype=v.dtype).copy_(v, non_blocking=True)


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative dx/dsigma."""
    if isinstance(sigma, torch.Tensor) and sigma.ndim == 0:
        # a host scalar broadcasts as is; the dtype is the one a [1,1,1,1] sigma would give
        diff = x - denoised
        return diff.to(torch.promote_types(diff.dtype, sigma.dtype)) / sigma
    return (x - denoised) / append_dims(sigma, x.ndim)


def ancestral_step(sigma_from, sigma_to, eta: float = 1.0):
    """(sigma_down, sigma_up): where to step deterministically, and how much noise to add back."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def half_log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha/sigma) for the VE-form sigmas of SD models."""
    return sigma.log().neg()


def sigma_from_half_log_snr(lam: torch.Tensor) -> torch.Tensor:
    return lam.neg().exp()


def extra(extra_args):
    return {} if extra_args is None else extra_args


def unit_batch(x: torch.Tensor) -> torch.Tensor:
    """Per-sample sigma multiplier: the model gets sigma as a [B] vector."""
    return x.new_ones([x.shape[0]])


def model_sampling_of(model):
    """The DiscreteSchedule behind a denoiser (ours, or ComfyUI-shaped wrappers)."""
    for path in (("model_sampling",), ("inner_model", "model_sampling"),
                 ("inner_model", "inner_model", "model_sampling")):
        obj = model
        try:
            for name in path:
                obj = getattr(obj, name)
            return obj
        except AttributeError:
            continue
    return None


def step(callback, x, i, sigma, denoised, sigma_hat=None):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma if sigma_hat is None else sigma_hat,
                  "denoised": denoised})


def churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise):
    """Karras' stochastic churn: raise sigma_i by gamma and add matching noise."""
    gamma = 0.0
    if s_churn > 0 and s_tmin <= sigmas[i] <= s_tmax:
        gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1)
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        x = x + torch.randn_like(x) * s_noise * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


def capture_uncond(extra_args: dict):
    """Install a post-CFG hook that records the unconditional estimate (CFG++ samplers need
    it) and turns off the cfg=1 shortcut so it is always computed. Returns (extra_args, get)."""
    seen = {"uncond": None}

    def post_cfg(args):
        seen["uncond"] = args["uncond_denoised"]
        return args["denoised"]

    options = dict(extra_args.get("model_options", {}))
    options["sampler_post_cfg_function"] = list(options.get("sampler_post_cfg_function", [])) + [post_cfg]
    options["disable_cfg1_optimization"] = True
    return {**extra_args, "model_options": options}, lambda: seen["uncond"]
