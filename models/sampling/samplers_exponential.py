"""Exponential-integrator SDE samplers in half-log-SNR time with data prediction:
er_sde (ER-SDE-Solver-3, arXiv 2309.06169), seeds_2 / seeds_3 (SEEDS, arXiv 2305.14267)
and exp_heun_2_x0(_sde) (SEEDS-2 with r = 1 and the phi_2 update)."""
from __future__ import annotations

from functools import partial

import torch

from models.sampling.k_common import extra, half_log_snr, host_sigmas, sigma_from_half_log_snr, step, unit_batch
from models.sampling.noise import default_noise_sampler


def h_phi_1(h):
    """h * phi_1(h)"""
    return torch.expm1(h)


def h_phi_2(h):
    """h * phi_2(h)"""
    return (torch.expm1(h) - h) / h


def _noise(x, extra_args, noise_sampler):
    return default_noise_sampler(x, seed=extra_args.get("seed")) if noise_sampler is None else noise_sampler


def er_noise_scaler(v):
    return v * ((v ** 0.3).exp() + 10.0)


@torch.no_grad()
def sample_er_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0,
                  noise_sampler=None, noise_scaler=None, max_stage=3):
    sigmas = host_sigmas(sigmas)
    extra_args, s_in = extra(extra_args), unit_batch(x)
    noise = _noise(x, extra_args, noise_sampler)
    scaler = er_noise_scaler if noise_scaler is None else noise_scaler
    n_points = 200.0
    points = torch.arange(0, n_points, dtype=torch.float32, device=x.device)
    lambdas = half_log_snr(sigmas).neg().exp()  # sigma_t / alpha_t
    old_denoised = old_denoised_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        step(callback, x, i, sigmas[i], denoised)
        stage = min(max_stage, i + 1)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = lambdas[i], lambdas[i + 1]
            alpha_s, alpha_t = sigmas[i] / lam_s, sigmas[i + 1] / lam_t
            r = scaler(lam_t) / scaler(lam_s)
            x = (alpha_t / alpha_s) * r * x + alpha_t * (1 - r) * denoised
            if stage >= 2:
                dt = lam_t - lam_s
                dl = -dt / n_points
                pos = lam_t + points * dl
                scaled = scaler(pos)
                s = torch.sum(1 / scaled) * dl
                denoised_d = (denoised - old_denoised) / (lam_s - lambdas[i - 1])
                x = x + alpha_t * (dt + s * scaler(lam_t)) * denoised_d
                if stage >= 3:
                    s_u = torch.sum((pos - lam_s) / scaled) * dl
                    denoised_u = (denoised_d - old_denoised_d) / ((lam_s - lambdas[i - 2]) / 2)
                    x = x + alpha_t * ((dt ** 2) / 2 + s_u * scaler(lam_t)) * denoised_u
                old_denoised_d = denoised_d
            if s_noise > 0:
                spread = (lam_t ** 2 - lam_s ** 2 * r ** 2).sqrt().nan_to_num(nan=0.0)
                x = x + alpha_t * noise(sigmas[i], sigmas[i + 1]) * s_noise * spread
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_seeds_2(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                   noise_sampler=None, r=0.5, solver_type="phi_1"):
    sigmas = host_sigmas(sigmas)
    if solver_type not in ("phi_1", "phi_2"):
        raise ValueError("solver_type must be 'phi_1' or 'phi_2'")
    extra_args, s_in = extra(extra_args), unit_batch(x)
    noise = _noise(x, extra_args, noise_sampler)
    inject = eta > 0 and s_noise > 0
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        step(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        lam_1 = torch.lerp(lam_s, lam_t, r)
        sigma_1 = sigma_from_half_log_snr(lam_1)
        alpha_1 = sigma_1 * lam_1.exp()
        alpha_t = sigmas[i + 1] * lam_t.exp()
        x_2 = sigma_1 / sigmas[i] * (-r * h * eta).exp() * x - alpha_1 * h_phi_1(-r * h_eta) * denoised
        if inject:
            sde_noise = (-2 * r * h * eta).expm1().neg().sqrt() * noise(sigmas[i], sigma_1)
            x_2 = x_2 + sde_noise * sigma_1 * s_noise
        denoised_2 = model(x_2, sigma_1 * s_in, **extra_args)
        decay = sigmas[i + 1] / sigmas[i] * (-h * eta).exp()
        if solver_type == "phi_1":
            x = decay * x - alpha_t * h_phi_1(-h_eta) * torch.lerp(denoised, denoised_2, fac)
        else:
            b2 = h_phi_2(-h_eta) / r
            b1 = h_phi_1(-h_eta) - b2
            x = decay * x - alpha_t * (b1 * denoised + b2 * denoised_2)
        if inject:
            seg = (r - 1) * h * eta
            sde_noise = sde_noise * seg.exp() + seg.mul(2).expm1().neg().sqrt() * noise(sigma_1, sigmas[i + 1])
            x = x + sde_noise * sigmas[i + 1] * s_noise
    return x


@torch.no_grad()
def sample_exp_heun_2_x0(model, x, sigmas, extra_args=None, callback=None, disable=None, solver_type="phi_2"):
    return sample_seeds_2(model, x, sigmas, extra_args, callback, disable, eta=0.0, s_noise=0.0, r=1.0,
                          solver_type=solver_type)


@torch.no_grad()
def sample_exp_heun_2_x0_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                             s_noise=1.0, noise_sampler=None, solver_type="phi_2"):
    return sample_seeds_2(model, x, sigmas, extra_args, callback, disable, eta=eta, s_noise=s_noise,
                          noise_sampler=noise_sampler, r=1.0, solver_type=solver_type)


@torch.no_grad()
def sample_seeds_3(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                   noise_sampler=None, r_1=1.0 / 3, r_2=2.0 / 3):
    sigmas = host_sigmas(sigmas)
    extra_args, s_in = extra(extra_args), unit_batch(x)
    noise = _noise(x, extra_args, noise_sampler)
    inject = eta > 0 and s_noise > 0
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        step(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        lam_1, lam_2 = torch.lerp(lam_s, lam_t, r_1), torch.lerp(lam_s, lam_t, r_2)
        sigma_1, sigma_2 = sigma_from_half_log_snr(lam_1), sigma_from_half_log_snr(lam_2)
        alpha_1, alpha_2 = sigma_1 * lam_1.exp(), sigma_2 * lam_2.exp()
        alpha_t = sigmas[i + 1] * lam_t.exp()
        # stage 1
        x_2 = sigma_1 / sigmas[i] * (-r_1 * h * eta).exp() * x - alpha_1 * h_phi_1(-r_1 * h_eta) * denoised
        if inject:
            sde_noise = (-2 * r_1 * h * eta).expm1().neg().sqrt() * noise(sigmas[i], sigma_1)
            x_2 = x_2 + sde_noise * sigma_1 * s_noise
        denoised_2 = model(x_2, sigma_1 * s_in, **extra_args)
        # stage 2
        a3_2 = r_2 / r_1 * h_phi_2(-r_2 * h_eta)
        a3_1 = h_phi_1(-r_2 * h_eta) - a3_2
        x_3 = sigma_2 / sigmas[i] * (-r_2 * h * eta).exp() * x - alpha_2 * (a3_1 * denoised + a3_2 * denoised_2)
        if inject:
            seg = (r_1 - r_2) * h * eta
            sde_noise = sde_noise * seg.exp() + seg.mul(2).expm1().neg().sqrt() * noise(sigma_1, sigma_2)
            x_3 = x_3 + sde_noise * sigma_2 * s_noise
        denoised_3 = model(x_3, sigma_2 * s_in, **extra_args)
        # stage 3
        b3 = h_phi_2(-h_eta) / r_2
        b1 = h_phi_1(-h_eta) - b3
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b3 * denoised_3)
        if inject:
            seg = (r_2 - 1) * h * eta
            sde_noise = sde_noise * seg.exp() + seg.mul(2).expm1().neg().sqrt() * noise(sigma_2, sigmas[i + 1])
            x = x + sde_noise * sigmas[i + 1] * s_noise
    return x
