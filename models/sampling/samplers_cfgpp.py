"""Samplers that use the unconditional estimate: the CFG++ family (Chung et al. 2024),
RES multistep (arXiv 2308.02157) and gradient estimation, with and without CFG++."""
from __future__ import annotations

from functools import partial

import torch

from models.sampling.k_common import (ancestral_step, capture_uncond, extra, half_log_snr, host_sigmas,
                                      sigma_from_half_log_snr, step, to_d, unit_batch)
from models.sampling.noise import default_noise_sampler


def _noise(x, extra_args, noise_sampler):
    return default_noise_sampler(x, seed=extra_args.get("seed")) if noise_sampler is None else noise_sampler


@torch.no_grad()
def sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None,
                                  eta=1.0, s_noise=1.0, noise_sampler=None):
    sigmas = host_sigmas(sigmas)
    extra_args = extra(extra_args)
    noise = _noise(x, extra_args, noise_sampler)
    extra_args, uncond = capture_uncond(extra_args)
    s_in = unit_batch(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        step(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        alpha_s = sigmas[i] * half_log_snr(sigmas[i]).exp()
        alpha_t = sigmas[i + 1] * half_log_snr(sigmas[i + 1]).exp()
        d = to_d(x, sigmas[i], alpha_s * uncond())
        sigma_down, sigma_up = ancestral_step(sigmas[i] / alpha_s, sigmas[i + 1] / alpha_t, eta)
        x = alpha_t * denoised + alpha_t * sigma_down * d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_euler_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    return sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args, callback, disable, eta=0.0, s_noise=0.0)


@torch.no_grad()
def sample_dpmpp_2s_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None,
                                     eta=1.0, s_noise=1.0, noise_sampler=None):
    sigmas = host_sigmas(sigmas)
    extra_args = extra(extra_args)
    noise = _noise(x, extra_args, noise_sampler)
    extra_args, uncond = capture_uncond(extra_args)
    s_in = unit_batch(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        step(callback, x, i, sigmas[i], denoised)
        u = uncond()
        if sigma_down == 0:
            x = denoised + to_d(x, sigmas[i], u) * sigma_down
        else:
            t, t_next = half_log_snr(sigmas[i]), half_log_snr(sigma_down)
            h = t_next - t
            s = t + 0.5 * h
            x_2 = (sigma_from_half_log_snr(s) / sigma_from_half_log_snr(t)) * (x + (denoised - u)) \
                - (-h * 0.5).expm1() * denoised
            denoised_2 = model(x_2, sigma_from_half_log_snr(s) * s_in, **extra_args)
            # the shift uses the unconditional estimate of the latest call (the midpoint's)
            x = (sigma_from_half_log_snr(t_next) / sigma_from_half_log_snr(t)) * (x + (denoised - uncond())) \
                - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    sigmas = host_sigmas(sigmas)
    extra_args, uncond = capture_uncond(extra(extra_args))
    s_in = unit_batch(x)
    old_uncond = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        step(callback, x, i, sigmas[i], denoised)
        u = uncond()
        t, t_next = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
        h = t_next - t
        if old_uncond is None or sigmas[i + 1] == 0:
            mix = -torch.exp(-h) * u
        else:
            r = (t - half_log_snr(sigmas[i - 1])) / h
            mix = -torch.exp(-h) * u - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + torch.exp(-h) * x
        old_uncond = u
    return x


@torch.no_grad()
def res_multistep(model, x, sigmas, extra_args=None, callback=None, disable=None,
                  s_noise=1.0, noise_sampler=None, eta=1.0, cfg_pp=False):
    sigmas = host_sigmas(sigmas)
    extra_args = extra(extra_args)
    noise = _noise(x, extra_args, noise_sampler)
    uncond = lambda: None  # noqa: E731
    if cfg_pp:
        extra_args, uncond = capture_uncond(extra_args)
    s_in = unit_batch(x)
    phi1 = lambda t: torch.expm1(t) / t  # noqa: E731
    phi2 = lambda t: (phi1(t) - 1.0) / t  # noqa: E731
    old_sigma_down = old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        step(callback, x, i, sigmas[i], denoised)
        u = uncond()
        if sigma_down == 0 or old_denoised is None:
            if cfg_pp:
                x = denoised + to_d(x, sigmas[i], u) * sigma_down
            else:
                x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_old = half_log_snr(sigmas[i]), half_log_snr(old_sigma_down)
            t_next, t_prev = half_log_snr(sigma_down), half_log_snr(sigmas[i - 1])
            h = t_next - t
            c2 = (t_prev - t_old) / h
            p1, p2 = phi1(-h), phi2(-h)
            b1 = torch.nan_to_num(p1 - p2 / c2, nan=0.0)
            b2 = torch.nan_to_num(p2 / c2, nan=0.0)
            if cfg_pp:
                x = x + (denoised - u)
                x = sigma_from_half_log_snr(h) * x + h * (b1 * u + b2 * old_denoised)
            else:
                x = sigma_from_half_log_snr(h) * x + h * (b1 * denoised + b2 * old_denoised)
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        old_denoised = u if cfg_pp else denoised
        old_sigma_down = sigma_down
    return x


sample_res_multistep = partial(res_multistep, eta=0.0, cfg_pp=False)
sample_res_multistep_cfg_pp = partial(res_multistep, eta=0.0, cfg_pp=True)
sample_res_multistep_ancestral = partial(res_multistep, cfg_pp=False)
sample_res_multistep_ancestral_cfg_pp = partial(res_multistep, cfg_pp=True)


@torch.no_grad()
def sample_gradient_estimation(model, x, sigmas, extra_args=None, callback=None, disable=None,
                               ge_gamma=2.0, cfg_pp=False):
    """Euler plus a correction along the change of the derivative (gamma = 2)."""
    sigmas = host_sigmas(sigmas)
    extra_args = extra(extra_args)
    uncond = lambda: None  # noqa: E731
    if cfg_pp:
        extra_args, uncond = capture_uncond(extra_args)
    s_in = unit_batch(x)
    old_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x, sigmas[i], uncond() if cfg_pp else denoised)
        step(callback, x, i, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sigmas[i + 1] if cfg_pp else x + d * dt
            if i >= 1:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


sample_gradient_estimation_cfg_pp = partial(sample_gradient_estimation, cfg_pp=True)
