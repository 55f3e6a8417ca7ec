"""DPM-Solver++ multistep and SDE samplers (Lu et al. 2022) in half-log-SNR time:
dpmpp_2m, dpmpp_sde, dpmpp_2m_sde (midpoint / heun), dpmpp_3m_sde, and their `_gpu`
twins whose Brownian tree lives on the sampling device instead of the CPU."""
from __future__ import annotations

from functools import partial

import torch

from models.sampling.k_common import (ancestral_step, extra, half_log_snr, host_sigmas, sigma_from_half_log_snr,
                                      step, unit_batch)
from models.sampling.noise import BrownianTreeNoise


def _tree(x, sigmas, extra_args, noise_sampler, cpu):
    if noise_sampler is not None:
        return noise_sampler
    sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
    return BrownianTreeNoise(x, sigma_min, sigma_max, seed=extra_args.get("seed"), cpu=cpu)


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    sigmas = host_sigmas(sigmas)
    extra_args, s_in = extra(extra_args), unit_batch(x)
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        step(callback, x, i, sigmas[i], denoised)
        t, t_next = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
        h = t_next - t
        ratio = sigma_from_half_log_snr(t_next) / sigma_from_half_log_snr(t)
        if old_denoised is None or sigmas[i + 1] == 0:
            x = ratio * x - (-h).expm1() * denoised
        else:
            r = (t - half_log_snr(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = ratio * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None,
                     eta=1.0, s_noise=1.0, noise_sampler=None, r=1 / 2, cpu_tree=True):
    sigmas = host_sigmas(sigmas)
    if len(sigmas) <= 1:
        return x
    extra_args, s_in = extra(extra_args), unit_batch(x)
    noise = _tree(x, sigmas, extra_args, noise_sampler, cpu_tree)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        step(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
        h = lam_t - lam_s
        lam_s1 = lam_s + r * h
        fac = 1 / (2 * r)
        sigma_s1 = sigma_from_half_log_snr(lam_s1)
        alpha_s = sigmas[i] * lam_s.exp()
        alpha_s1 = sigma_s1 * lam_s1.exp()
        alpha_t = sigmas[i + 1] * lam_t.exp()
        # stage 1: to the intermediate point
        sd, su = ancestral_step(lam_s.neg().exp(), lam_s1.neg().exp(), eta)
        h_ = sd.log().neg() - lam_s
        x_2 = (alpha_s1 / alpha_s) * (-h_).exp() * x - alpha_s1 * (-h_).expm1() * denoised
        if eta > 0 and s_noise > 0:
            x_2 = x_2 + alpha_s1 * noise(sigmas[i], sigma_s1) * s_noise * su
        denoised_2 = model(x_2, sigma_s1 * s_in, **extra_args)
        # stage 2: the full step with the blended estimate
        sd, su = ancestral_step(lam_s.neg().exp(), lam_t.neg().exp(), eta)
        h_ = sd.log().neg() - lam_s
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (alpha_t / alpha_s) * (-h_).exp() * x - alpha_t * (-h_).expm1() * denoised_d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise(sigmas[i], sigmas[i + 1]) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None,
                        eta=1.0, s_noise=1.0, noise_sampler=None, solver_type="midpoint", cpu_tree=True):
    sigmas = host_sigmas(sigmas)
    if len(sigmas) <= 1:
        return x
    if solver_type not in ("heun", "midpoint"):
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    extra_args, s_in = extra(extra_args), unit_batch(x)
    noise = _tree(x, sigmas, extra_args, noise_sampler, cpu_tree)
    old_denoised, h, h_last = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        step(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
            h = lam_t - lam_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lam_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + alpha_t * ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta > 0 and s_noise > 0:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None,
                        eta=1.0, s_noise=1.0, noise_sampler=None, cpu_tree=True):
    sigmas = host_sigmas(sigmas)
    if len(sigmas) <= 1:
        return x
    extra_args, s_in = extra(extra_args), unit_batch(x)
    noise = _tree(x, sigmas, extra_args, noise_sampler, cpu_tree)
    denoised_1 = denoised_2 = None
    h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        step(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
            h = lam_t - lam_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lam_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:  # third order from the last three estimates
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif h_1 is not None:  # second order while history is short
                x = x + (alpha_t * phi_2) * ((denoised - denoised_1) / (h_1 / h))
            if eta > 0 and s_noise > 0:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


# The `_gpu` names build the Brownian tree on x's device (CUDA RNG there); on the CPU
# they behave like the plain names except for the tree's placement.
sample_dpmpp_sde_gpu = partial(sample_dpmpp_sde, cpu_tree=False)
sample_dpmpp_2m_sde_gpu = partial(sample_dpmpp_2m_sde, cpu_tree=False)
sample_dpmpp_2m_sde_heun = partial(sample_dpmpp_2m_sde, solver_type="heun")
sample_dpmpp_2m_sde_heun_gpu = partial(sample_dpmpp_2m_sde, solver_type="heun", cpu_tree=False)
sample_dpmpp_3m_sde_gpu = partial(sample_dpmpp_3m_sde, cpu_tree=False)
