"""DPM-Solver (Lu et al. 2022, arXiv 2206.00927) in noise-prediction form, time t = -log sigma:
dpm_fast (fixed NFE budget, orders 3/2/1) and dpm_adaptive (embedded 2/3 pairs with a PID
step-size controller). Both ignore the schedule's shape: only its first and last non-zero
sigma matter, as in ComfyUI."""
from __future__ import annotations

import math

import torch

from models.sampling.k_common import ancestral_step, extra, host_sigmas
from models.sampling.noise import default_noise_sampler


def _t(sigma):
    return -sigma.log()


def _sigma(t):
    return t.neg().exp()


class _Eps:
    """Noise prediction at (x, t), cached per named stage within one step."""

    def __init__(self, model, extra_args):
        self.model, self.extra_args = model, extra_args
        self.nfe = 0

    def __call__(self, cache: dict, key: str, x, t):
        if key not in cache:
            sigma = _sigma(t) * x.new_ones([x.shape[0]])
            cache[key] = (x - self.model(x, sigma, **self.extra_args)) / _sigma(t)
            self.nfe += 1
        return cache[key]


def _step1(eps, cache, x, t, t_next):
    h = t_next - t
    return x - _sigma(t_next) * h.expm1() * eps(cache, "eps", x, t)


def _step2(eps, cache, x, t, t_next, r1=1 / 2):
    h = t_next - t
    e = eps(cache, "eps", x, t)
    s1 = t + r1 * h
    u1 = x - _sigma(s1) * (r1 * h).expm1() * e
    e1 = eps(cache, "eps_r1", u1, s1)
    return x - _sigma(t_next) * h.expm1() * e - _sigma(t_next) / (2 * r1) * h.expm1() * (e1 - e)


def _step3(eps, cache, x, t, t_next, r1=1 / 3, r2=2 / 3):
    h = t_next - t
    e = eps(cache, "eps", x, t)
    s1, s2 = t + r1 * h, t + r2 * h
    u1 = x - _sigma(s1) * (r1 * h).expm1() * e
    e1 = eps(cache, "eps_r1", u1, s1)
    u2 = x - _sigma(s2) * (r2 * h).expm1() * e - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (e1 - e)
    e2 = eps(cache, "eps_r2", u2, s2)
    return x - _sigma(t_next) * h.expm1() * e - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (e2 - e)


def _limits(sigmas):
    sigma_min = sigmas[-1] if sigmas[-1] != 0 else sigmas[-2]
    return sigma_min, sigmas[0]


def _report(callback, x, i, t, t_up, denoised):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": _sigma(t), "sigma_hat": _sigma(t_up), "denoised": denoised})


@torch.no_grad()
def sample_dpm_fast(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=0.0, s_noise=1.0,
                    noise_sampler=None):
    sigmas = host_sigmas(sigmas)
    if len(sigmas) <= 1:
        return x
    extra_args = extra(extra_args)
    sigma_min, sigma_max = _limits(sigmas)
    nfe = len(sigmas) - 1
    noise = default_noise_sampler(x, seed=extra_args.get("seed")) if noise_sampler is None else noise_sampler
    eps = _Eps(model, extra_args)
    t_start, t_end = _t(torch.as_tensor(sigma_max)), _t(torch.as_tensor(sigma_min))
    m = math.floor(nfe / 3) + 1
    ts = torch.linspace(t_start, t_end, m + 1)  # on the host: the step control reads it
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        cache: dict = {}
        t, t_next = ts[i], ts[i + 1]
        if eta:
            sd, _ = ancestral_step(_sigma(t), _sigma(t_next), eta)
            t_next_ = torch.minimum(t_end, _t(sd))
            su = (_sigma(t_next) ** 2 - _sigma(t_next_) ** 2) ** 0.5
        else:
            t_next_, su = t_next, 0.0
        e = eps(cache, "eps", x, t)
        _report(callback, x, i, t, t, x - _sigma(t) * e)
        step = {1: _step1, 2: _step2, 3: _step3}[order]
        x = step(eps, cache, x, t, t_next_)
        x = x + su * s_noise * noise(_sigma(t), _sigma(t_next))
    return x


class PIDStepSize:
    """PID controller for the adaptive step size (accepts when the factor >= accept_safety)."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order=1, accept_safety=0.81, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety, self.eps = accept_safety, eps
        self.errs: list[float] = []

    def propose(self, error) -> bool:
        inv = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv, inv, inv]
        self.errs[0] = inv
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


@torch.no_grad()
def sample_dpm_adaptive(model, x, sigmas, extra_args=None, callback=None, disable=None, order=3, rtol=0.05,
                        atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81,
                        eta=0.0, s_noise=1.0, noise_sampler=None):
    sigmas = host_sigmas(sigmas)
    if len(sigmas) <= 1:
        return x
    if order not in (2, 3):
        raise ValueError("order should be 2 or 3")
    extra_args = extra(extra_args)
    sigma_min, sigma_max = _limits(sigmas)
    noise = default_noise_sampler(x, seed=extra_args.get("seed")) if noise_sampler is None else noise_sampler
    eps = _Eps(model, extra_args)
    t_start, t_end = _t(torch.as_tensor(sigma_max)), _t(torch.as_tensor(sigma_min))
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    s, x_prev, steps = t_start, x, 0
    pid = PIDStepSize(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    while s < t_end - 1e-5:
        cache: dict = {}
        t = torch.minimum(t_end, s + pid.h)
        if eta:
            sd, _ = ancestral_step(_sigma(s), _sigma(t), eta)
            t_ = torch.minimum(t_end, _t(sd))
            su = (_sigma(t) ** 2 - _sigma(t_) ** 2) ** 0.5
        else:
            t_, su = t, 0.0
        denoised = x - _sigma(s) * eps(cache, "eps", x, s)
        if order == 2:
            x_low, x_high = _step1(eps, cache, x, s, t_), _step2(eps, cache, x, s, t_)
        else:
            x_low, x_high = _step2(eps, cache, x, s, t_, r1=1 / 3), _step3(eps, cache, x, s, t_)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose(error):
            x_prev = x_low
            x = x_high + su * s_noise * noise(_sigma(s), _sigma(t))
            s = t
        steps += 1
        _report(callback, x, steps - 1, s, s, denoised)
    return x
