"""GITSScheduler (ComfyUI's comfy_extras.nodes_gits, V3): the GITS table's schedule for the
step count, resampled log-linearly beyond 20 steps."""
from __future__ import annotations

import torch

from models.sampling.gits_levels import NOISE_LEVELS
from nodes import v3 as io
from nodes.sampling_schedulers import CATEGORY, loglinear_interp


def gits_sigmas(coeff: float, steps: int, denoise: float) -> torch.Tensor:
    if denoise <= 0.0:
        return torch.FloatTensor([])
    kept = steps if denoise >= 1.0 else round(steps * denoise)
    key = round(coeff, 2)
    if key not in NOISE_LEVELS:  # the table has 0.05 steps only; the widget enforces them
        raise ValueError(f"GITSScheduler: coeff {coeff} is not one of {sorted(NOISE_LEVELS)}")
    rows = NOISE_LEVELS[key]
    if steps <= 20:
        sigmas = list(rows[steps - 2])
    else:  # the 20-step row, stretched to steps + 1 points
        sigmas = list(loglinear_interp(rows[-1], steps + 1))
    sigmas = sigmas[-(kept + 1):]
    sigmas[-1] = 0  # the schedule ends at a clean sample
    return torch.FloatTensor(sigmas)


class GITSScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GITSScheduler", category=CATEGORY, inputs=[
            io.Float.Input("coeff", default=1.20, min=0.80, max=1.50, step=0.05),
            io.Int.Input("steps", default=10, min=2, max=1000),
            io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01)],
            outputs=[io.Sigmas.Output()])

    @classmethod
    def execute(cls, coeff, steps, denoise):
        return io.NodeOutput(gits_sigmas(coeff, steps, denoise))


V3_NODES = [GITSScheduler]
