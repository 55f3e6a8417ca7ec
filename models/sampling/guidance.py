"""One denoising evaluation with classifier-free guidance (COVERAGE.md §2.4 step 5).

Every active conditioning entry (its timestep range covers this sigma) is evaluated on
its area with its mask and strength; entries that can share a model call (same shapes,
same ControlNet) are batched, cond and uncond together. Overlapping areas are averaged
by their weights; area edges are feathered over 8 latent pixels. Then CFG:
uncond + cfg * (cond - uncond), with the uncond pass skipped at cfg == 1 unless a
sampler needs it, and the model_options hooks custom nodes use
(sampler_cfg_function, sampler_pre_cfg_function, sampler_post_cfg_function,
model_function_wrapper).

`model` here is the inner diffusion model: `apply_model(x, sigma, **model_conds)` returns
the denoised estimate; `memory_required(shape)` (optional) bounds the batch size.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from models.sampling import prompt_batching

FEATHER = 8
UNBOUNDED_START = 999999999.9  # percent_to_sigma(0.0): no sigma is above it


def _area_dims(area: list, ndims: int) -> list:
    while len(area) // 2 < ndims:
        half = len(area) // 2
        area = [2147483648] + area[:half] + [0] + area[half:]
    return area


class _Chunk(NamedTuple):
    input_x: torch.Tensor
    mult: torch.Tensor
    conditioning: dict
    area: list | None
    control: object
    patches: dict | None
    uuid: object


def area_and_mult(cond: dict, x: torch.Tensor, sigma: torch.Tensor) -> _Chunk | None:
    """What one conditioning entry contributes at this sigma, or None when inactive."""
    dims = tuple(x.shape[2:])
    # a range that starts at 0% or ends at 100% holds any sigma there: no comparison, so no
    # device-to-host sync on the GPU (ComfyUI compares every step)
    start, end = cond.get("timestep_start", UNBOUNDED_START), cond.get("timestep_end", 0.0)
    if start < UNBOUNDED_START and sigma[0] > start:
        return None
    if end > 0.0 and sigma[0] < end:
        return None
    area = None
    if "area" in cond:
        area = _area_dims(list(cond["area"]), len(dims))
        if len(area) // 2 > len(dims):
            half = len(area) // 2
            area = area[:len(dims)] + area[half:half + len(dims)]
    strength = cond.get("strength", 1.0)
    input_x = x
    if area is not None:
        for i in range(len(dims)):
            area[i] = min(input_x.shape[i + 2] - area[len(dims) + i], area[i])
            input_x = input_x.narrow(i + 2, area[len(dims) + i], area[i])
    if "mask" in cond:
        mask = cond["mask"][:input_x.shape[0]]
        if area is not None:
            for i in range(len(dims)):
                mask = mask.narrow(i + 1, area[len(dims) + i], area[i])
        mask = mask * cond.get("mask_strength", 1.0)
        mask = mask.unsqueeze(1).repeat((input_x.shape[0] // mask.shape[0], input_x.shape[1]) + (1,) * (mask.ndim - 1))
    else:
        mask = torch.ones_like(input_x)
    mult = mask * strength
    if "mask" not in cond and area is not None:
        _feather(mult, area, dims, x.shape)
    conditioning = {k: c.process_cond(batch_size=x.shape[0], area=area) for k, c in cond["model_conds"].items()}
    return _Chunk(input_x, mult, conditioning, area, cond.get("control"), None, cond.get("uuid"))


def _feather(mult, area, dims, full_shape):
    """Ramp the weight up over the first/last pixels of an area that does not touch the edge."""
    n = len(dims)
    for i in range(n):
        rr = min(FEATHER, mult.shape[2 + i] // 4)
        if area[n + i] != 0:
            for t in range(rr):
                mult.narrow(i + 2, t, 1).mul_((1.0 / rr) * (t + 1))
        if area[i] + area[n + i] < full_shape[i + 2]:
            for t in range(rr):
                mult.narrow(i + 2, area[i] - 1 - t, 1).mul_((1.0 / rr) * (t + 1))


def _same_object(a, b) -> bool:
    return (a is None) == (b is None) and (a is None or a is b)


def can_batch(a: _Chunk, b: _Chunk) -> bool:
    if a.input_x.shape != b.input_x.shape:
        return False
    if not _same_object(a.control, b.control) or not _same_object(a.patches, b.patches):
        return False
    c1, c2 = a.conditioning, b.conditioning
    if c1 is c2:
        return True
    return c1.keys() == c2.keys() and all(c1[k].can_concat(c2[k]) for k in c1)


def concat_conditioning(items: list[dict]) -> dict:
    merged: dict[str, list] = {}
    for item in items:
        for k, v in item.items():
            merged.setdefault(k, []).append(v)
    return {k: v[0].concat(v[1:]) for k, v in merged.items()}


def _fits(model, chunks, first_shape, device) -> bool:
    required = getattr(model, "memory_required", None)
    free = getattr(model, "free_memory", None)
    if required is None or free is None:
        return True
    shape = [len(chunks) * first_shape[0]] + list(first_shape)[1:]
    return required(shape) * 1.5 < free(device)


def calc_cond_batch(model, conds: list, x: torch.Tensor, sigma: torch.Tensor, model_options: dict) -> list:
    """Denoised estimates for each list of conditioning entries in `conds` (None = skip)."""
    out = [torch.zeros_like(x) for _ in conds]
    counts = [torch.ones_like(x) * 1e-37 for _ in conds]
    to_run: list[tuple[_Chunk, int]] = []
    for index, cond in enumerate(conds):
        for entry in cond or []:
            chunk = area_and_mult(entry, x, sigma)
            if chunk is not None:
                to_run.append((chunk, index))

    while to_run:
        first = to_run[0][0]
        compatible = [i for i, (c, _) in enumerate(to_run) if can_batch(c, first)]
        compatible.reverse()  # ComfyUI pops from the back, so uncond precedes cond in a batch
        chosen = compatible[:1]
        for div in range(1, len(compatible) + 1):
            candidate = compatible[:len(compatible) // div]
            if _fits(model, candidate, first.input_x.shape, x.device):
                chosen = candidate
                break
        picked = [to_run.pop(i) for i in chosen]
        chunks = [p[0] for p in picked]
        which = [p[1] for p in picked]
        input_x = torch.cat([c.input_x for c in chunks])
        c = concat_conditioning([ch.conditioning for ch in chunks])
        sigma_batch = torch.cat([sigma] * len(chunks))
        transformer_options = dict(model_options.get("transformer_options", {}))
        transformer_options.update({"cond_or_uncond": which[:], "uuids": [ch.uuid for ch in chunks],
                                    "sigmas": sigma})
        c["transformer_options"] = transformer_options
        control = chunks[-1].control
        if control is not None:
            c["control"] = control.get_control(input_x, sigma_batch, c, len(which), transformer_options)
        if "model_function_wrapper" in model_options:
            result = model_options["model_function_wrapper"](
                model.apply_model, {"input": input_x, "timestep": sigma_batch, "c": c, "cond_or_uncond": which})
        else:  # with --batch-prompts, batched with other prompts' calls (plain call otherwise)
            result = prompt_batching.apply_model(model, input_x, sigma_batch, c)
        for part, chunk, index in zip(result.chunk(len(which)), chunks, which):
            if chunk.area is None:
                out[index] += part * chunk.mult
                counts[index] += chunk.mult
            else:
                o, n = out[index], counts[index]
                dims = len(chunk.area) // 2
                for i in range(dims):
                    o = o.narrow(i + 2, chunk.area[i + dims], chunk.area[i])
                    n = n.narrow(i + 2, chunk.area[i + dims], chunk.area[i])
                o += part * chunk.mult
                n += chunk.mult
    return [o / n for o, n in zip(out, counts)]


def cfg_function(model, cond_pred, uncond_pred, cond_scale, x, sigma, model_options=None, cond=None, uncond=None):
    model_options = model_options or {}
    if "sampler_cfg_function" in model_options:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred, "cond_scale": cond_scale, "timestep": sigma,
                "input": x, "sigma": sigma, "cond_denoised": cond_pred, "uncond_denoised": uncond_pred,
                "model": model, "model_options": model_options, "input_cond": cond, "input_uncond": uncond}
        result = x - model_options["sampler_cfg_function"](args)
    else:
        result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
    for fn in model_options.get("sampler_post_cfg_function", []):
        result = fn({"denoised": result, "cond": cond, "uncond": uncond, "cond_scale": cond_scale, "model": model,
                     "uncond_denoised": uncond_pred, "cond_denoised": cond_pred, "sigma": sigma,
                     "model_options": model_options, "input": x})
    return result


def sampling_function(model, x, sigma, uncond, cond, cond_scale, model_options=None, seed=None):
    """The guided denoised estimate at one sigma."""
    model_options = model_options or {}
    skip_uncond = math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False)
    conds = [cond, None if skip_uncond else uncond]
    if "sampler_calc_cond_batch_function" in model_options:
        out = model_options["sampler_calc_cond_batch_function"](
            {"conds": conds, "input": x, "sigma": sigma, "model": model, "model_options": model_options})
    else:
        out = calc_cond_batch(model, conds, x, sigma, model_options)
    for fn in model_options.get("sampler_pre_cfg_function", []):
        out = fn({"conds": conds, "conds_out": out, "cond_scale": cond_scale, "timestep": sigma, "input": x,
                  "sigma": sigma, "model": model, "model_options": model_options})
    return cfg_function(model, out[0], out[1], cond_scale, x, sigma, model_options, cond=cond,
                        uncond=conds[1])
