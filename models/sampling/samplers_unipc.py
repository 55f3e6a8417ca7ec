"""UniPC (Zhao et al. 2023, arXiv 2302.04867): unified predictor-corrector multistep solver,
data prediction, B(h) = h (bh1) or e^h - 1 (bh2), order <= 3 with lower order at the end.

Runs in VP coordinates with the sigma itself as the time label, as ComfyUI's port does:
alpha = 1/sqrt(1 + sigma^2), the last sigma 0 replaced by 0.001.

The times and every coefficient are computed on the host (no sync per step); what meets
the latent goes over with an asynchronous copy."""
from __future__ import annotations

from functools import partial

import torch

from models.sampling.k_common import extra, host_sigmas, on_device


def _log_alpha(sigma):
    return 0.5 * torch.log(1 / (sigma * sigma + 1))


def _alpha(sigma):
    return torch.exp(_log_alpha(sigma))


def _std(sigma):
    return torch.sqrt(1.0 - torch.exp(2.0 * _log_alpha(sigma)))


def _lambda(sigma):
    la = _log_alpha(sigma)
    return la - 0.5 * torch.log(1.0 - torch.exp(2.0 * la))


def _bcast(v, ndim):
    return v[(...,) + (None,) * (ndim - 1)]


def _update(data_fn, x, model_prev, t_prev, t, order, variant, use_corrector):
    """One UniPC step from t_prev[-1] to t: predictor from the stored estimates, then
    (optionally) corrector with the fresh estimate at t. Returns (x_t, model_t or None)."""
    ndim = x.dim()
    dev = lambda v: on_device(_bcast(v, ndim), x)  # noqa: E731 - a host [B] factor onto the latent
    lam_prev0, lam_t = _lambda(t_prev[-1]), _lambda(t)
    m0 = model_prev[-1]
    sigma_prev0, sigma_t = _std(t_prev[-1]), _std(t)
    alpha_t = torch.exp(_log_alpha(t))
    h = lam_t - lam_prev0

    rks, d1s = [], []
    for i in range(1, order):
        rk = ((_lambda(t_prev[-(i + 1)]) - lam_prev0) / h)[0]
        rks.append(rk)
        d1s.append((model_prev[-(i + 1)] - m0) / rk)
    rks.append(1.0)
    rks = torch.tensor(rks)

    hh = -h[0]
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    rows, b, fact = [], [], 1
    for i in range(1, order + 1):
        rows.append(torch.pow(rks, i - 1))
        b.append(h_phi_k * fact / b_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    R = torch.stack(rows)
    b = torch.tensor(b)

    D1s = torch.stack(d1s, dim=1) if d1s else None
    if D1s is not None:
        rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
    if use_corrector:
        rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(R, b)

    x_base = dev(sigma_t / sigma_prev0) * x - dev(alpha_t * h_phi_1) * m0
    pred = torch.tensordot(D1s, on_device(rhos_p, x), dims=([1], [0])) if D1s is not None else 0
    x_t = x_base - dev(alpha_t * b_h) * pred
    model_t = None
    if use_corrector:
        model_t = data_fn(x_t, t)
        corr = torch.tensordot(D1s, on_device(rhos_c[:-1], x), dims=([1], [0])) if D1s is not None else 0
        x_t = x_base - dev(alpha_t * b_h) * (corr + rhos_c[-1] * (model_t - m0))
    return x_t, model_t


@torch.no_grad()
def sample_unipc(model, x, sigmas, extra_args=None, callback=None, disable=False, variant="bh1"):
    sigmas = host_sigmas(sigmas)
    extra_args = extra(extra_args)
    ts = sigmas.clone()
    if ts[-1] == 0:
        ts[-1] = 0.001

    def data_fn(x_vp, t):
        # VP input -> the model's sigma-space input -> eps -> data prediction in VP space
        if t.reshape(-1).shape[0] == 1:
            t = t.expand(x_vp.shape[0])
        t = on_device(t, x_vp)
        sigma = t.view(t.shape[:1] + (1,) * (x_vp.ndim - 1))
        x_in = x_vp * ((sigma ** 2 + 1.0) ** 0.5)
        eps = (x_in - model(x_in, t, **extra_args)) / sigma
        return (x_vp - _bcast(_std(t), x_vp.dim()) * eps) / _bcast(_alpha(t), x_vp.dim())

    x = x / torch.sqrt(1.0 + ts[0] ** 2.0)
    order = min(3, len(ts) - 2)
    steps = len(ts) - 1
    batch = x.shape[0]
    model_prev, t_prev = [], []
    for step_index in range(steps):
        if step_index == 0:
            vec_t = ts[0].expand(batch)
            model_prev, t_prev = [data_fn(x, vec_t)], [vec_t]
        elif step_index < order:
            vec_t = ts[step_index].expand(batch)
            x, model_x = _update(data_fn, x, model_prev, t_prev, vec_t, step_index, variant, True)
            model_prev.append(data_fn(x, vec_t) if model_x is None else model_x)
            t_prev.append(vec_t)
        else:
            last = step_index == steps - 1
            for s in range(step_index, step_index + 1 + int(last)):
                vec_t = ts[s].expand(batch)
                s_order = min(order, steps + 1 - s)
                x, model_x = _update(data_fn, x, model_prev, t_prev, vec_t, s_order, variant, s != steps)
                t_prev = t_prev[1:] + [vec_t]
                model_prev = model_prev[1:] + [model_prev[-1]]
                if s < steps:
                    model_prev[-1] = data_fn(x, vec_t) if model_x is None else model_x
        if callback is not None:
            callback({"x": x, "i": step_index, "denoised": model_prev[-1]})
    return x / _alpha(ts[-1])


sample_unipc_bh2 = partial(sample_unipc, variant="bh2")
