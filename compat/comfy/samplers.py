"""`comfy.samplers` for custom node packs: the sampler and scheduler names (KSampler.SAMPLERS /
SCHEDULERS, used in INPUT_TYPES combos), SAMPLER objects, sigmas and the CFG guider."""
from __future__ import annotations

from models.sampling.ksampler import CFGGuider, KSamplerObject, sampler_object  # noqa: F401
from models.sampling.samplers import SAMPLER_NAMES
from models.sampling.schedulers import SCHEDULER_NAMES
from models.sampling.schedulers import calculate_sigmas as _calculate_sigmas

KSAMPLER_NAMES = [n for n in SAMPLER_NAMES if n not in ("ddim", "uni_pc", "uni_pc_bh2")]
KSAMPLER = KSamplerObject


class KSampler:
    """Only the name lists: packs read KSampler.SAMPLERS / KSampler.SCHEDULERS."""
    SAMPLERS = SAMPLER_NAMES
    SCHEDULERS = SCHEDULER_NAMES


def calculate_sigmas(model_sampling, scheduler_name: str, steps: int):
    return _calculate_sigmas(model_sampling, scheduler_name, steps)
