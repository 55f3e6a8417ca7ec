"""SA-Solver: stochastic Adams predictor-corrector (arXiv 2309.05019), data prediction in
half-log-SNR time; stochastic only while sigma lies between 20 % and 80 % of the schedule."""
from __future__ import annotations

import math
from functools import partial

import torch

from models.sampling.k_common import (extra, half_log_snr, host_sigmas, model_sampling_of, on_device, step,
                                      unit_batch)
from models.sampling.model_sampling import DiscreteSchedule
from models.sampling.noise import default_noise_sampler


def exponential_coefficients(s: torch.Tensor, t: torch.Tensor, order: int, tau: float) -> torch.Tensor:
    """(1 + tau^2) * integral_s^t exp((1 + tau^2) x) x^p dx for p < order, with
    exp((1 + tau^2) t) factored out; integration by parts written as a triangular matrix."""
    k = 1 + tau ** 2
    h = t - s
    p = torch.arange(order, dtype=s.dtype, device=s.device)
    ends = t ** p - s ** p * (-k * h).exp()
    depth = p.unsqueeze(1) - p.unsqueeze(0)
    log_fact = (p + 1).lgamma()
    coeff = log_fact.unsqueeze(1) - log_fact.unsqueeze(0)
    if tau > 0:
        coeff = coeff - depth * math.log(k)
    signs = torch.where(depth % 2 == 0, 1.0, -1.0)
    return (coeff.exp() * signs).tril() @ ends


def _simple_order2(sigma_next, lambdas, lam_s, lam_t, tau, corrector):
    k = 1 + tau ** 2
    h = lam_t - lam_s
    alpha_t = sigma_next * lam_t.exp()
    if corrector:
        b1 = alpha_t * (0.5 * k * h)
        b2 = alpha_t * (-h * k).expm1().neg() - b1
    else:
        b2 = alpha_t * (0.5 * k * h ** 2) / (lambdas[-2] - lam_s)
        b1 = alpha_t * (-h * k).expm1().neg() - b2
    return torch.stack([b2, b1])


def adams_coefficients(sigma_next, lambdas, lam_s, lam_t, tau, simple_order_2=False, corrector=False):
    """Weights b_i of the past estimates: Lagrange basis on `lambdas` integrated exactly."""
    n = lambdas.shape[0]
    if simple_order_2 and n == 2:
        return _simple_order2(sigma_next, lambdas, lam_s, lam_t, tau, corrector)
    integrals = exponential_coefficients(lam_s, lam_t, n, tau)
    vander_t = torch.vander(lambdas, n, increasing=True).T
    return sigma_next * lam_t.exp() * torch.linalg.solve(vander_t, integrals)


def tau_window(start_sigma: float, end_sigma: float, eta: float = 1.0):
    def tau(sigma) -> float:
        if eta <= 0:
            return 0.0
        sigma = sigma.item() if isinstance(sigma, torch.Tensor) else sigma
        return eta if start_sigma >= sigma >= end_sigma else 0.0
    return tau


@torch.no_grad()
def sample_sa_solver(model, x, sigmas, extra_args=None, callback=None, disable=False, tau_func=None,
                     s_noise=1.0, noise_sampler=None, predictor_order=3, corrector_order=4,
                     use_pece=False, simple_order_2=False):
    sigmas = host_sigmas(sigmas)
    if len(sigmas) <= 1:
        return x
    extra_args, s_in = extra(extra_args), unit_batch(x)
    noise_fn = default_noise_sampler(x, seed=extra_args.get("seed")) if noise_sampler is None else noise_sampler
    lambdas = half_log_snr(sigmas)
    if tau_func is None:
        ms = model_sampling_of(model) or DiscreteSchedule()
        tau_func = tau_window(ms.percent_to_sigma(0.2), ms.percent_to_sigma(0.8))
    keep = max(predictor_order, corrector_order)
    x_pred = x
    h, tau_t, noise = 0.0, 0.0, 0.0
    history: list[torch.Tensor] = []
    taper = sigmas[-1].item() == 0  # lower the order near the end for stability (host sigmas: no sync)
    for i in range(len(sigmas) - 1):
        denoised = model(x_pred, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x_pred, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        history = (history + [denoised])[-keep:]
        p_order = min(predictor_order, len(history))
        c_order = 0 if i == 0 or (sigmas[i + 1] == 0 and not use_pece) else min(corrector_order, len(history))
        if taper:
            p_order = min(p_order, len(sigmas) - 2 - i)
            c_order = min(c_order, len(sigmas) - 1 - i)
        # corrector
        if c_order == 0:
            x = x_pred
        else:
            b = adams_coefficients(sigmas[i], lambdas[i - c_order + 1:i + 1], lambdas[i - 1], lambdas[i],
                                   tau_t, simple_order_2, corrector=True)
            mix = torch.tensordot(torch.stack(history[-c_order:], dim=1), on_device(b, x), dims=([1], [0]))
            x = sigmas[i] / sigmas[i - 1] * (-(tau_t ** 2) * h).exp() * x + mix
            if tau_t > 0 and s_noise > 0:
                x = x + noise
            if use_pece:
                denoised = model(x, sigmas[i] * s_in, **extra_args)
                history[-1] = denoised
        # predictor
        if sigmas[i + 1] == 0:
            x_pred = denoised
            continue
        tau_t = tau_func(sigmas[i + 1])
        b = adams_coefficients(sigmas[i + 1], lambdas[i - p_order + 1:i + 1], lambdas[i], lambdas[i + 1],
                               tau_t, simple_order_2, corrector=False)
        mix = torch.tensordot(torch.stack(history[-p_order:], dim=1), on_device(b, x), dims=([1], [0]))
        h = lambdas[i + 1] - lambdas[i]
        x_pred = sigmas[i + 1] / sigmas[i] * (-(tau_t ** 2) * h).exp() * x + mix
        if tau_t > 0 and s_noise > 0:
            noise = noise_fn(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * tau_t ** 2 * h).expm1().neg().sqrt() * s_noise
            x_pred = x_pred + noise
    return x_pred


sample_sa_solver_pece = partial(sample_sa_solver, use_pece=True)
