"""Ancestral samplers: step down deterministically to sigma_down, then add fresh noise
sigma_up (euler_ancestral, dpm_2_ancestral, dpmpp_2s_ancestral), and the DDPM and LCM steps."""
from __future__ import annotations

import torch

from models.sampling.k_common import (ancestral_step, extra, half_log_snr, host_sigmas, model_sampling_of,
                                      on_device, sigma_from_half_log_snr, step, to_d, unit_batch)
from models.sampling.noise import default_noise_sampler


def _noise(x, extra_args, noise_sampler):
    return default_noise_sampler(x, seed=extra_args.get("seed")) if noise_sampler is None else noise_sampler


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                           eta=1.0, s_noise=1.0, noise_sampler=None):
    sigmas = host_sigmas(sigmas)
    extra_args, s_in = extra(extra_args), unit_batch(x)
    noise = _noise(x, extra_args, noise_sampler)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        step(callback, x, i, sigmas[i], denoised)
        if sigma_down == 0:
            x = denoised
        else:
            d = to_d(x, sigmas[i], denoised)
            x = x + d * (sigma_down - sigmas[i]) + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                           eta=1.0, s_noise=1.0, noise_sampler=None):
    sigmas = host_sigmas(sigmas)
    extra_args, s_in = extra(extra_args), unit_batch(x)
    noise = _noise(x, extra_args, noise_sampler)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        step(callback, x, i, sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
            continue
        sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
        x_2 = x + d * (sigma_mid - sigmas[i])
        d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
        x = x + d_2 * (sigma_down - sigmas[i])
        x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                              eta=1.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver++(2S): a half step in log-SNR, then the full step from its estimate."""
    sigmas = host_sigmas(sigmas)
    extra_args, s_in = extra(extra_args), unit_batch(x)
    noise = _noise(x, extra_args, noise_sampler)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        step(callback, x, i, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = half_log_snr(sigmas[i]), half_log_snr(sigma_down)
            h = t_next - t
            s = t + 0.5 * h
            sigma_s = sigma_from_half_log_snr(s)
            x_2 = (sigma_s / sigmas[i]) * x - (-h * 0.5).expm1() * denoised
            denoised_2 = model(x_2, sigma_s * s_in, **extra_args)
            x = (sigma_from_half_log_snr(t_next) / sigmas[i]) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _vp_step_sampler(model, x, sigmas, extra_args, callback, noise_sampler, step_fn):
    """Run a step defined in variance-preserving coordinates (x / sqrt(1 + sigma^2))."""
    sigmas = host_sigmas(sigmas)
    extra_args, s_in = extra(extra_args), unit_batch(x)
    noise = _noise(x, extra_args, noise_sampler)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        step(callback, x, i, sigmas[i], denoised)
        eps = (x - denoised) / sigmas[i]
        x = step_fn(x / torch.sqrt(1.0 + sigmas[i] ** 2.0), sigmas[i], sigmas[i + 1], eps, noise)
        if sigmas[i + 1] != 0:
            x = x * torch.sqrt(1.0 + sigmas[i + 1] ** 2.0)
    return x


def ddpm_step(x, sigma, sigma_prev, eps, noise):
    a_cum = 1 / (sigma * sigma + 1)
    a_cum_prev = 1 / (sigma_prev * sigma_prev + 1)
    alpha = a_cum / a_cum_prev
    mu = (1.0 / alpha).sqrt() * (x - (1 - alpha) * eps / (1 - a_cum).sqrt())
    if sigma_prev > 0:
        mu = mu + ((1 - alpha) * (1.0 - a_cum_prev) / (1.0 - a_cum)).sqrt() * noise(sigma, sigma_prev)
    return mu


@torch.no_grad()
def sample_ddpm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    return _vp_step_sampler(model, x, sigmas, extra_args, callback, noise_sampler, ddpm_step)


@torch.no_grad()
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """Latent consistency: jump to the estimate, then re-noise to the next sigma."""
    sigmas = host_sigmas(sigmas)
    extra_args, s_in = extra(extra_args), unit_batch(x)
    noise = _noise(x, extra_args, noise_sampler)
    ms = model_sampling_of(model)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        step(callback, x, i, sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            # a device sigma: model samplings from node packs view it to the latent's rank
            x = ms.noise_scaling(on_device(sigmas[i + 1], x), noise(sigmas[i], sigmas[i + 1]), x)
    return x
