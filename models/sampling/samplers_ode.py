"""Deterministic ODE samplers: euler, heun, heunpp2, dpm_2, lms (Karras et al. 2022 and k-diffusion)."""
from __future__ import annotations

import torch

from models.sampling.k_common import churn, extra, host_sigmas, step, to_d, unit_batch

INF = float("inf")


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=INF, s_noise=1.0):
    sigmas = host_sigmas(sigmas)
    extra_args, s_in = extra(extra_args), unit_batch(x)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        step(callback, x, i, sigmas[i], denoised, sigma_hat)
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None,
                s_churn=0.0, s_tmin=0.0, s_tmax=INF, s_noise=1.0):
    sigmas = host_sigmas(sigmas)
    extra_args, s_in = extra(extra_args), unit_batch(x)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        step(callback, x, i, sigmas[i], denoised, sigma_hat)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:  # last step: plain Euler
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
        x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_heunpp2(model, x, sigmas, extra_args=None, callback=None, disable=None,
                   s_churn=0.0, s_tmin=0.0, s_tmax=INF, s_noise=1.0):
    """Heun++: a third evaluation, weighted by how far along the schedule the step is."""
    sigmas = host_sigmas(sigmas)
    extra_args, s_in = extra(extra_args), unit_batch(x)
    s_end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        # Heun++ draws its churn noise every step, used or not; kept so the global
        # generator advances exactly as in ComfyUI.
        gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        eps = torch.randn_like(x) * s_noise
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        step(callback, x, i, sigmas[i], denoised, sigma_hat)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == s_end:
            x = x + d * dt
        elif sigmas[i + 2] == s_end:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
            w = 2 * sigmas[0]
            w2 = sigmas[i + 1] / w
            x = x + (d * (1 - w2) + d_2 * w2) * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
            dt_2 = sigmas[i + 2] - sigmas[i + 1]
            x_3 = x_2 + d_2 * dt_2
            d_3 = to_d(x_3, sigmas[i + 2], model(x_3, sigmas[i + 2] * s_in, **extra_args))
            w = 3 * sigmas[0]
            w2 = sigmas[i + 1] / w
            w3 = sigmas[i + 2] / w
            x = x + (d * (1 - w2 - w3) + d_2 * w2 + d_3 * w3) * dt
    return x


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=INF, s_noise=1.0):
    """Second order via the derivative at the log-midpoint sigma."""
    sigmas = host_sigmas(sigmas)
    extra_args, s_in = extra(extra_args), unit_batch(x)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        step(callback, x, i, sigmas[i], denoised, sigma_hat)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
            continue
        sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
        x_2 = x + d * (sigma_mid - sigma_hat)
        d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
        x = x + d_2 * (sigmas[i + 1] - sigma_hat)
    return x


def lms_coefficient(order: int, t, i: int, j: int) -> float:
    """Integral over [t_i, t_{i+1}] of the j-th Lagrange basis polynomial on the last `order` sigmas."""
    from scipy import integrate
    if order - 1 > i:
        raise ValueError(f"order {order} too high for step {i}")

    def basis(tau):
        prod = 1.0
        for k in range(order):
            if k != j:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod
    return integrate.quad(basis, t[i], t[i + 1], epsrel=1e-4)[0]


@torch.no_grad()
def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
    sigmas = host_sigmas(sigmas)
    extra_args, s_in = extra(extra_args), unit_batch(x)
    t = sigmas.detach().cpu().numpy()
    history = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        history.append(to_d(x, sigmas[i], denoised))
        if len(history) > order:
            history.pop(0)
        step(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        cur = min(i + 1, order)
        coeffs = [lms_coefficient(cur, t, i, j) for j in range(cur)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(history)))
    return x
