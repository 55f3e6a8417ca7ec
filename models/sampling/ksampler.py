"""The KSampler pipeline (COVERAGE.md §2.4): conditioning preparation, the CFG guider,
noise scaling, inpainting with a noise mask, and the step callback.

Model objects it expects (the MODEL that flows between nodes, ComfyUI's ModelPatcher
shape): `patcher.model` is the inner diffusion model with `model_sampling`
(DiscreteSchedule), `latent_format` (`process_in`/`process_out`, `latent_channels`),
`extra_conds(**params) -> {name: Cond}` and `apply_model(x, sigma, **conds)`;
`patcher.model_options` holds the hooks custom nodes set; `patcher.load_device`.
"""
from __future__ import annotations

import logging
import math
import uuid

import torch

from models import devices, memory
from models.sampling import prompt_batching, schedulers
from models.sampling.conds import reshape_mask
from models.sampling.guidance import sampling_function
from models.sampling.samplers import get_sampler

log = logging.getLogger(__name__)


def convert_cond(conditioning) -> list[dict]:
    """CONDITIONING ([[tensor, dict], ...]) -> the entry dicts the guider works on."""
    out = []
    for tensor, options in conditioning:
        entry = dict(options)
        if tensor is not None:
            entry["cross_attn"] = tensor
        entry["model_conds"] = dict(entry.get("model_conds", {}))
        entry["uuid"] = uuid.uuid4()
        out.append(entry)
    return out


# -- preparing the conditioning for one run ----------------------------------------

def _resolve_areas_and_masks(conds: list[dict], dims, device) -> None:
    for i, c in enumerate(conds):
        if "area" in c and c["area"][0] == "percentage":
            a = c["area"][1:]
            half = len(a) // 2
            area = tuple(max(1, round(a[d] * dims[d])) for d in range(len(dims)))
            area += tuple(round(a[d + half] * dims[d]) for d in range(len(dims)))
            c = {**c, "area": area}
            conds[i] = c
        if "mask" in c:
            mask = c["mask"].to(device=device)
            if mask.ndim == len(dims):
                mask = mask.unsqueeze(0)
            if tuple(mask.shape[1:]) != tuple(dims):
                mask = torch.nn.functional.interpolate(mask.unsqueeze(1), size=tuple(dims), mode="bilinear").squeeze(1)
            c = {**c, "mask": mask}
            if c.get("set_area_to_bounds", False):
                c["area"] = _mask_bounds(mask)
            conds[i] = c


def _mask_bounds(mask: torch.Tensor) -> tuple:
    bounds = torch.max(torch.abs(mask), dim=0).values
    if torch.max(bounds != 0) == False:  # noqa: E712 - tensor comparison
        return (8, 8, 0, 0)
    ys, xs = torch.where(bounds)
    h = max(8, int(ys.max() - ys.min() + 1))
    w = max(8, int(xs.max() - xs.min() + 1))
    return (h, w, int(ys.min()), int(xs.min()))


def _timestep_ranges(ms, conds: list[dict]) -> None:
    for i, c in enumerate(conds):
        start = end = None
        if "clip_start_percent" in c:
            start = ms.percent_to_sigma(max(c["clip_start_percent"], c.get("start_percent", 0.0)))
            end = ms.percent_to_sigma(min(c["clip_end_percent"], c.get("end_percent", 1.0)))
        else:
            if "start_percent" in c:
                start = ms.percent_to_sigma(c["start_percent"])
            if "end_percent" in c:
                end = ms.percent_to_sigma(c["end_percent"])
        if start is not None or end is not None:
            c = dict(c)
            if start is not None:
                c["timestep_start"] = start
            if end is not None:
                c["timestep_end"] = end
            conds[i] = c


def _encode_model_conds(model, conds: list[dict], noise, device, prompt_type, **kwargs) -> None:
    """Let the model turn each entry into its inputs (context, ADM vector, concat...);
    width/height default to the latent size x 8."""
    for i, c in enumerate(conds):
        params = dict(c)
        params.update(device=device, noise=noise)
        params["width"] = params.get("width", noise.shape[3] * 8 if noise.ndim >= 4 else None)
        params["height"] = params.get("height", noise.shape[2] * 8)
        params["prompt_type"] = params.get("prompt_type", prompt_type)
        for k, v in kwargs.items():
            params.setdefault(k, v)
        built = model.extra_conds(**params)
        conds[i] = {**c, "model_conds": {**c["model_conds"], **built}}


def _area_inside(a, outer) -> bool:
    half_a, half_o = len(a) // 2, len(outer) // 2
    for i in range(min(half_a, half_o)):
        if a[half_a + i] < outer[half_o + i]:
            return False
        if a[i] + a[half_a + i] > outer[i] + outer[half_o + i]:
            return False
    return True


def _add_matching_area(conds: list[dict], c: dict) -> None:
    """Give the other side an entry covering the same area, so areas are guided on both sides."""
    if "area" not in c:
        return
    smallest = None
    for x in conds:
        if "area" in x:
            if _area_inside(c["area"], x["area"]):
                if smallest is None or "area" not in smallest or \
                        math.prod(smallest["area"][:len(smallest["area"]) // 2]) > math.prod(x["area"][:len(x["area"]) // 2]):
                    smallest = x
        elif smallest is None:
            smallest = x
    if smallest is None or smallest.get("area") == c["area"]:
        return
    conds.append({**c, "model_conds": dict(smallest["model_conds"])})


def _share_controlnets_with_uncond(positive: list[dict], other: list[dict]) -> None:
    """ControlNets marked control_apply_to_uncond are copied onto the negative side."""
    cond_cnets = [x["control"] for x in positive
                  if "area" not in x and x.get("control_apply_to_uncond", False) and x.get("control") is not None]
    if any("area" not in x and x.get("control") is not None for x in other):
        return
    plain = [(x, t) for t, x in enumerate(other) if "area" not in x and x.get("control") is None]
    for i, cnet in enumerate(cond_cnets):
        entry, index = plain[i % len(plain)]
        other[index] = {**entry, "control": cnet}


def process_conds(model, noise, conds: dict, device, latent_image=None, denoise_mask=None, seed=None) -> dict:
    for k in conds:
        conds[k] = conds[k][:]
        _resolve_areas_and_masks(conds[k], noise.shape[2:], device)
        _timestep_ranges(model.model_sampling, conds[k])
        _encode_model_conds(model, conds[k], noise, device, k, latent_image=latent_image,
                            denoise_mask=denoise_mask, seed=seed)
    for k in conds:
        for c in list(conds[k]):
            for kk in conds:
                if kk != k:
                    _add_matching_area(conds[kk], c)
    for k in conds:
        for c in conds[k]:
            if "control" in c:
                c["control"].pre_run(model, model.model_sampling.percent_to_sigma)
    if "positive" in conds:
        for k in conds:
            if k != "positive":
                _share_controlnets_with_uncond(conds["positive"], conds[k])
    return conds


# -- the guider ---------------------------------------------------------------------

class CFGGuider:
    """Holds the conditionings and cfg; calling it gives the guided denoised estimate."""

    def __init__(self, patcher):
        self.patcher = patcher
        self.model_options = getattr(patcher, "model_options", {})
        self.original_conds: dict[str, list] = {}
        self.cfg = 1.0

    def set_conds(self, positive, negative=None):
        conds = {"positive": positive}
        if negative is not None:
            conds["negative"] = negative
        self.inner_set_conds(conds)

    def inner_set_conds(self, conds: dict):
        for k, v in conds.items():
            self.original_conds[k] = convert_cond(v)

    def set_cfg(self, cfg: float):
        self.cfg = cfg

    @property
    def model_patcher(self):
        return self.patcher

    def __call__(self, x, sigma, model_options=None, seed=None):
        return self.predict_noise(x, sigma, model_options or {}, seed)

    def predict_noise(self, x, sigma, model_options=None, seed=None):
        """The guided estimate; guiders with other formulas override this."""
        return sampling_function(self.inner_model, x, sigma, self.conds.get("negative"), self.conds.get("positive"),
                                 self.cfg, model_options=model_options or {}, seed=seed)

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, seed=None):
        """`sampler`: a KSamplerObject or a sampler name."""
        if sigmas.shape[-1] == 0:
            return latent_image
        # with --batch-prompts, wait until the shared weights may carry this patcher's LoRA set
        with prompt_batching.session(self.patcher):
            return self._sample_on_device(noise, latent_image, sampler, sigmas, denoise_mask, callback, seed)

    def _sample_on_device(self, noise, latent_image, sampler, sigmas, denoise_mask, callback, seed):
        # the UNet and the ControlNets onto the compute device, with room for a CFG batch
        models_used = [self.patcher] + _controls(self.original_conds)
        need = _memory_required(self.patcher, noise.shape)
        memory.load_models(models_used, need)
        if hasattr(self.patcher, "prepare_for_sampling"):
            self.patcher.prepare_for_sampling(self.original_conds)
        model = self.inner_model = (self.patcher.sampling_model() if hasattr(self.patcher, "sampling_model")
                                    else self.patcher.model)
        device = getattr(self.patcher, "load_device", noise.device)
        noise, latent_image, sigmas = noise.to(device), latent_image.to(device), sigmas.to(device)
        if denoise_mask is not None:
            denoise_mask = reshape_mask(denoise_mask, noise.shape).to(device)
        if torch.count_nonzero(latent_image) > 0:  # an empty latent is not shifted
            latent_image = model.latent_format.process_in(latent_image)
        run = (model, noise, latent_image, sampler, sigmas, denoise_mask, callback, seed)
        try:
            return self._sample_once(*run)
        except torch.OutOfMemoryError:
            pass  # retried below, once the exception (and the tensors its frames hold) is gone
        log.warning("out of memory while sampling: freeing the other models and retrying once")
        memory.manager().free_others(models_used)
        memory.soft_empty_cache()
        memory.load_models(models_used, need * 2)  # less of the model resident, more room to work
        try:
            return self._sample_once(*run)
        except torch.OutOfMemoryError as e:
            shape = "x".join(str(d) for d in noise.shape)
            raise torch.OutOfMemoryError(
                f"out of memory while sampling a {shape} latent, also after unloading every other model: "
                f"use a smaller batch or image size, or start the server with --lowvram or --novram ({e})") from None

    def _sample_once(self, model, noise, latent_image, sampler, sigmas, denoise_mask, callback, seed):
        self.conds = {k: [dict(c) for c in v] for k, v in self.original_conds.items()}
        self.conds = process_conds(model, noise, self.conds, noise.device, latent_image, denoise_mask, seed)
        options = dict(self.model_options)
        options["transformer_options"] = {**options.get("transformer_options", {}), "sample_sigmas": sigmas}
        try:
            if isinstance(sampler, str):
                sampler = sampler_object(sampler)
            samples = sampler.sample(self, sigmas, {"model_options": options, "seed": seed}, callback, noise,
                                     latent_image, denoise_mask)
        finally:
            for k in self.conds:
                for c in self.conds[k]:
                    if "control" in c:
                        c["control"].cleanup()
        # results leave the GPU (ComfyUI's intermediate device), so nodes downstream get CPU tensors
        return model.latent_format.process_out(samples.to(devices.intermediate_device(), torch.float32))


class _InpaintDenoiser:
    """Keeps the unmasked region pinned to the (re-noised) original latent."""

    def __init__(self, guider, sigmas, latent_image, noise):
        self.inner_model = guider
        self.model_sampling = guider.inner_model.model_sampling
        self.sigmas, self.latent_image, self.noise = sigmas, latent_image, noise

    def __call__(self, x, sigma, denoise_mask=None, model_options=None, seed=None):
        model_options = model_options or {}
        if denoise_mask is not None:
            if "denoise_mask_function" in model_options:
                denoise_mask = model_options["denoise_mask_function"](
                    sigma, denoise_mask, extra_options={"model": self.inner_model, "sigmas": self.sigmas})
            keep = 1.0 - denoise_mask
            renoised = self.model_sampling.noise_scaling(sigma.reshape([sigma.shape[0]] + [1] * (len(self.noise.shape) - 1)),
                                                         self.noise, self.latent_image)
            x = x * denoise_mask + renoised * keep
        out = self.inner_model(x, sigma, model_options=model_options, seed=seed)
        if denoise_mask is not None:
            out = out * denoise_mask + self.latent_image * keep
        return out


def _controls(conds: dict) -> list:
    """Every ControlNet / T2I-Adapter in the conditionings, chains included."""
    out, seen = [], set()
    for entries in conds.values():
        for c in entries:
            control = c.get("control")
            while control is not None and id(control) not in seen:
                seen.add(id(control))
                out.append(control)
                control = getattr(control, "previous_controlnet", None)
    return out


def _memory_required(patcher, shape) -> float:
    """Working memory of one UNet call on the cond+uncond batch."""
    model = getattr(patcher, "model", None)
    if not hasattr(model, "memory_required"):
        return 0
    return model.memory_required([shape[0] * 2] + list(shape[1:]))


def max_denoise(ms, sigmas) -> bool:
    top, first = float(ms.sigma_max), float(sigmas[0])
    return math.isclose(top, first, rel_tol=1e-05) or first > top


class KSamplerObject:
    """A SAMPLER value: a sampler function with fixed options. `sample` scales the starting
    noise, wraps the guider for inpainting, and maps the step callback."""

    def __init__(self, function, extra_options: dict | None = None, inpaint_random: bool = False):
        self.function = function
        self.extra_options = extra_options or {}
        self.inpaint_random = inpaint_random

    def sample(self, guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask):
        ms = guider.inner_model.model_sampling
        extra_args["denoise_mask"] = denoise_mask
        denoiser = _InpaintDenoiser(guider, sigmas, latent_image, noise)
        if self.inpaint_random:  # ddim: the re-noised keep-area uses its own seeded noise
            generator = torch.manual_seed(extra_args.get("seed", 41) + 1)
            denoiser.noise = torch.randn(noise.shape, generator=generator, device="cpu").to(noise.dtype).to(noise.device)
        x = ms.noise_scaling(sigmas[0], noise, latent_image, max_denoise(ms, sigmas))
        total = len(sigmas) - 1
        k_callback = None
        if callback is not None:
            k_callback = lambda d: callback(d["i"], d["denoised"], d["x"], total)  # noqa: E731
        samples = self.function(denoiser, x, sigmas, extra_args=extra_args, callback=k_callback, disable=True,
                                **self.extra_options)
        return ms.inverse_noise_scaling(sigmas[-1], samples)


def sampler_object(name: str, extra_options: dict | None = None) -> KSamplerObject:
    return KSamplerObject(get_sampler(name), extra_options, inpaint_random=name == "ddim")


def sample(patcher, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0,
           disable_noise=False, start_step=None, last_step=None, force_full_denoise=False, noise_mask=None,
           sigmas=None, callback=None, seed=None):
    """KSampler / KSamplerAdvanced: schedule, window, then guided sampling."""
    ms = patcher.get_model_object("model_sampling") if hasattr(patcher, "get_model_object") \
        else patcher.model.model_sampling
    if sigmas is None:
        sigmas = schedulers.ksampler_sigmas(ms, scheduler, sampler_name, steps, denoise)
    window = schedulers.advanced_sigmas(sigmas, start_step, last_step, force_full_denoise)
    if window is None:  # start_step at or beyond the last step: the latent is returned as is
        return latent_image
    guider = CFGGuider(patcher)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider.sample(noise, latent_image, sampler_object(sampler_name), window, noise_mask, callback, seed)
