"""The nine KSampler schedulers, the custom-sampling schedule formulas, and KSampler's
step/denoise rules (COVERAGE.md §2.2). Every schedule ends with sigma 0."""
from __future__ import annotations

import math

import numpy as np
import torch

from models.sampling.model_sampling import DiscreteSchedule


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


# -- formulas that need only sigma_min / sigma_max -------------------------------

def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    ramp = torch.linspace(1, 0, n) ** rho
    return append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def vp(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> torch.Tensor:
    t = torch.linspace(1, eps_s, n)
    return append_zero(torch.sqrt(torch.special.expm1(beta_d * t ** 2 / 2 + beta_min * t)))


def laplace(n: int, sigma_min: float, sigma_max: float, mu: float = 0.0, beta: float = 0.5) -> torch.Tensor:
    eps = 1e-5  # keeps the log away from 0 at the ends
    x = torch.linspace(0, 1, n)
    clamp = lambda v: torch.clamp(v, min=sigma_min, max=sigma_max)  # noqa: E731
    lmb = mu - beta * torch.sign(0.5 - x) * torch.log(1 - 2 * torch.abs(0.5 - x) + eps)
    return append_zero(clamp(torch.exp(lmb)))


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    ramp = torch.arange(n, dtype=torch.float).div_(n - 1)
    sigmas = ramp.new_zeros(n + 1)
    sigmas[:-1] = (ramp * math.atan(sigma_min) + (1 - ramp) * math.atan(sigma_max)).tan_()
    return sigmas


# -- formulas over the model's table --------------------------------------------

def simple(ms: DiscreteSchedule, steps: int) -> torch.Tensor:
    stride = len(ms.sigmas) / steps
    sigs = [float(ms.sigmas[-(1 + int(i * stride))]) for i in range(steps)]
    return torch.FloatTensor(sigs + [0.0])


def ddim_uniform(ms: DiscreteSchedule, steps: int) -> torch.Tensor:
    start = 1
    if math.isclose(float(ms.sigmas[start]), 0, abs_tol=1e-5):
        steps += 1
        sigs = []
    else:
        sigs = [0.0]
    stride = max(len(ms.sigmas) // steps, 1)
    sigs += [float(ms.sigmas[i]) for i in range(start, len(ms.sigmas), stride)]
    return torch.FloatTensor(sigs[::-1])


def normal(ms: DiscreteSchedule, steps: int, sgm: bool = False) -> torch.Tensor:
    start, end = ms.timestep(ms.sigma_max), ms.timestep(ms.sigma_min)
    append = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(ms.sigma(end)), 0, abs_tol=1e-5):
            steps += 1
            append = False
        timesteps = torch.linspace(start, end, steps)
    sigs = [float(ms.sigma(t)) for t in timesteps]
    if append:
        sigs.append(0.0)
    return torch.FloatTensor(sigs)


def sgm_uniform(ms: DiscreteSchedule, steps: int) -> torch.Tensor:
    return normal(ms, steps, sgm=True)


def beta(ms: DiscreteSchedule, steps: int, alpha: float = 0.6, beta_: float = 0.6) -> torch.Tensor:
    import scipy.stats  # scipy is heavy to import; only this schedule needs it
    last = len(ms.sigmas) - 1
    ts = 1 - np.linspace(0, 1, steps, endpoint=False)
    ts = np.rint(scipy.stats.beta.ppf(ts, alpha, beta_) * last)
    sigs, prev = [], -1
    for t in ts:
        if t != prev:
            sigs.append(float(ms.sigmas[int(t)]))
        prev = t
    return torch.FloatTensor(sigs + [0.0])


def linear_quadratic(ms: DiscreteSchedule, steps: int, threshold: float = 0.025,
                     linear_steps: int | None = None) -> torch.Tensor:
    if steps == 1:
        schedule = [1.0, 0.0]
    else:
        linear_steps = steps // 2 if linear_steps is None else linear_steps
        linear = [i * threshold / linear_steps for i in range(linear_steps)]
        step_diff = linear_steps - threshold * steps
        quad_steps = steps - linear_steps
        a = step_diff / (linear_steps * quad_steps ** 2)
        b = threshold / linear_steps - 2 * step_diff / (quad_steps ** 2)
        c = a * linear_steps ** 2
        quad = [a * i ** 2 + b * i + c for i in range(linear_steps, steps)]
        schedule = [1.0 - x for x in linear + quad + [1.0]]
    return torch.FloatTensor(schedule) * ms.sigma_max.cpu()


def _by_limits(fn):
    return lambda ms, steps: fn(n=steps, sigma_min=float(ms.sigma_min), sigma_max=float(ms.sigma_max))


# KSampler.SCHEDULERS, in ComfyUI's order.
SCHEDULERS = {
    "simple": simple,
    "sgm_uniform": sgm_uniform,
    "karras": _by_limits(karras),
    "exponential": _by_limits(exponential),
    "ddim_uniform": ddim_uniform,
    "beta": beta,
    "normal": normal,
    "linear_quadratic": linear_quadratic,
    "kl_optimal": _by_limits(kl_optimal),
}
SCHEDULER_NAMES = list(SCHEDULERS)

# Samplers that get one extra step whose penultimate sigma is then dropped.
DISCARD_PENULTIMATE = {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}


def calculate_sigmas(ms: DiscreteSchedule, scheduler: str, steps: int) -> torch.Tensor:
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; known: {', '.join(SCHEDULER_NAMES)}")
    return SCHEDULERS[scheduler](ms, steps)


def ksampler_sigmas(ms: DiscreteSchedule, scheduler: str, sampler: str, steps: int,
                    denoise: float | None = 1.0) -> torch.Tensor:
    """The sigmas KSampler uses: extra step for DISCARD_PENULTIMATE samplers, and for
    denoise < 1 the tail of a longer schedule."""
    def full(n):
        if sampler in DISCARD_PENULTIMATE:
            s = calculate_sigmas(ms, scheduler, n + 1)
            return torch.cat([s[:-2], s[-1:]])
        return calculate_sigmas(ms, scheduler, n)

    if denoise is None or denoise > 0.9999:
        return full(steps)
    if denoise <= 0.0:
        return torch.FloatTensor([])
    return full(int(steps / denoise))[-(steps + 1):]


def advanced_sigmas(sigmas: torch.Tensor, start_step: int | None, last_step: int | None,
                    force_full_denoise: bool) -> torch.Tensor | None:
    """KSamplerAdvanced's window: cut at last_step (forcing 0 unless leftover noise is
    kept), then start at start_step. None means nothing to sample (return the latent)."""
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[:last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step < len(sigmas) - 1:
            sigmas = sigmas[start_step:]
        else:
            return None
    return sigmas


def sd_turbo(ms: DiscreteSchedule, steps: int, denoise: float) -> torch.Tensor:
    start = 10 - int(10 * denoise)
    timesteps = torch.flip(torch.arange(1, 11) * 100 - 1, (0,))[start:start + steps]
    return append_zero(ms.sigma(timesteps))
