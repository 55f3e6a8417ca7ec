"""Linear multistep samplers on the ODE derivative d = (x - denoised) / sigma:
ipndm (fixed Adams-Bashforth weights), ipndm_v (weights from the actual step sizes) and
deis (weights integrated in the VP time of the DEIS paper)."""
from __future__ import annotations

import torch

from models.sampling.k_common import extra, host_sigmas, step, unit_batch


def _push(history: list, d: torch.Tensor, keep: int) -> None:
    history.append(d)
    if len(history) > keep:
        history.pop(0)


def _ab_fixed(order, dt, d, h):
    """Adams-Bashforth with the classic constant-step weights (h[-1] is the newest)."""
    if order == 1:
        return dt * d
    if order == 2:
        return dt * (3 * d - h[-1]) / 2
    if order == 3:
        return dt * (23 * d - 16 * h[-1] + 5 * h[-2]) / 12
    return dt * (55 * d - 59 * h[-1] + 37 * h[-2] - 9 * h[-3]) / 24


@torch.no_grad()
def sample_ipndm(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=4):
    sigmas = host_sigmas(sigmas)
    extra_args, s_in = extra(extra_args), unit_batch(x)
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        step(callback, x, i, sigmas[i], denoised)
        d = (x - denoised) / sigmas[i]
        if sigmas[i + 1] == 0:
            x_next = denoised
        else:
            x_next = x + _ab_fixed(min(max_order, i + 1), sigmas[i + 1] - sigmas[i], d, history)
        _push(history, d, max_order - 1)
        x = x_next
    return x


def _ab_variable(order, t, i, d, h):
    """Variable-step Adams-Bashforth weights (iPNDM-v) for step i of the grid t."""
    hn = t[i + 1] - t[i]
    if order == 1:
        return hn * d
    h1 = t[i] - t[i - 1]
    if order == 2:
        c1 = (2 + hn / h1) / 2
        c2 = -(hn / h1) / 2
        return hn * (c1 * d + c2 * h[-1])
    h2 = t[i - 1] - t[i - 2]
    tmp1 = (1 - hn / (3 * (hn + h1)) * (hn * (hn + h1)) / (h1 * (h1 + h2))) / 2
    if order == 3:
        c1 = (2 + hn / h1) / 2 + tmp1
        c2 = -(hn / h1) / 2 - (1 + h1 / h2) * tmp1
        c3 = tmp1 * h1 / h2
        return hn * (c1 * d + c2 * h[-1] + c3 * h[-2])
    h3 = t[i - 2] - t[i - 3]
    tmp2 = ((1 - hn / (3 * (hn + h1))) / 2 + (1 - hn / (2 * (hn + h1))) * hn / (6 * (hn + h1 + h2))) \
        * (hn * (hn + h1) * (hn + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3))
    ratio = h1 * (h1 + h2) / (h2 * (h2 + h3))
    c1 = (2 + hn / h1) / 2 + tmp1 + tmp2
    c2 = -(hn / h1) / 2 - (1 + h1 / h2) * tmp1 - (1 + h1 / h2 + ratio) * tmp2
    c3 = tmp1 * h1 / h2 + (h1 / h2 + ratio * (1 + h2 / h3)) * tmp2
    c4 = -tmp2 * ratio * h1 / h2
    return hn * (c1 * d + c2 * h[-1] + c3 * h[-2] + c4 * h[-3])


@torch.no_grad()
def sample_ipndm_v(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=4):
    sigmas = host_sigmas(sigmas)
    extra_args, s_in = extra(extra_args), unit_batch(x)
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        step(callback, x, i, sigmas[i], denoised)
        d = (x - denoised) / sigmas[i]
        if sigmas[i + 1] == 0:
            x_next = denoised
        else:
            x_next = x + _ab_variable(min(max_order, i + 1), sigmas, i, d, history)
        _push(history, d, max_order - 1)
        x = x_next
    return x


# -- DEIS ----------------------------------------------------------------------

def _vp_time(sigmas: torch.Tensor, eps_s=1e-3, sigma_min=0.002, sigma_max=80.0):
    """Map EDM sigmas to the VP-SDE time t of DEIS, with its (beta_0, beta_1). float32
    throughout, as the reference computes it."""
    lo = torch.tensor(sigma_min) ** 2 + 1
    hi = torch.tensor(sigma_max) ** 2 + 1
    beta_d = 2 * (lo.log() / eps_s - hi.log()) / (eps_s - 1)
    beta_min = hi.log() - 0.5 * beta_d
    s = sigmas.detach().cpu()
    t = ((beta_min ** 2 + 2 * beta_d * (s ** 2 + 1).log()).sqrt() - beta_min) / beta_d
    return t, beta_min, beta_d + beta_min


def deis_coefficients(sigmas: torch.Tensor, max_order: int, n: int = 10000) -> list[list]:
    """Per step, the weights of the current and previous derivatives ('tab' mode): the
    Lagrange basis on past times integrated against -0.5 dlog(alpha)/dt / sqrt(alpha(1-alpha))."""
    sigmas = host_sigmas(sigmas)
    t, b0, b1 = _vp_time(sigmas)
    out = []
    for i in range(len(t) - 1):
        order = min(i + 1, max_order)
        if order == 1:
            out.append([])
            continue
        taus = torch.linspace(t[i], t[i + 1], n)
        dtau = (t[i + 1] - t[i]) / n
        alpha = torch.exp(-0.5 * taus ** 2 * (b1 - b0) - taus * b0)
        dlog_alpha = -taus * (b1 - b0) - b0
        integrand = -0.5 * dlog_alpha / torch.sqrt(alpha * (1 - alpha))
        prev = t[[i - k for k in range(order)]]
        coeffs = []
        for j in range(order):
            poly = 1
            for k in range(order):
                if k != j:
                    poly = poly * (taus - prev[k]) / (prev[j] - prev[k])
            coeffs.append(torch.sum(integrand * poly) * dtau)
        out.append(coeffs)
    return out


@torch.no_grad()
def sample_deis(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=3):
    sigmas = host_sigmas(sigmas)
    extra_args, s_in = extra(extra_args), unit_batch(x)
    coeffs = deis_coefficients(sigmas, max_order)
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        step(callback, x, i, sigmas[i], denoised)
        d = (x - denoised) / sigmas[i]
        order = 1 if sigmas[i + 1] <= 0 else min(max_order, i + 1)
        if order == 1:
            x_next = x + (sigmas[i + 1] - sigmas[i]) * d
        else:
            c = coeffs[i]
            x_next = x + c[0] * d + sum(c[k] * history[-k] for k in range(1, order))
        _push(history, d, max_order - 1)
        x = x_next
    return x
