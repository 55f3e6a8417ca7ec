"""More of ComfyUI's nodes_custom_sampler (V3): sigma tools (ExtendIntermediateSigmas,
SamplingPercentToSigma), the ER-SDE sampler with its solver variants, and AddNoise."""
from __future__ import annotations

import math

import torch

from models.sampling import ksampler
from nodes import v3 as io
from nodes.sampling_custom import SAMPLER_CATEGORY
from nodes.sampling_schedulers import SIGMA_CATEGORY, model_sampling

# spacing name -> where the inserted points fall between two sigmas, for x in (0, 1)
SPACINGS = {
    "linear": lambda x: x,
    "cosine": lambda x: torch.sin(x * math.pi / 2),
    "sine": lambda x: 1 - torch.cos(x * math.pi / 2),
}


def extend_sigmas(sigmas: torch.Tensor, steps: int, start_at_sigma: float, end_at_sigma: float,
                  spacing: str) -> torch.Tensor:
    """Split every interval whose upper sigma lies in [end_at_sigma, start_at_sigma] into `steps`
    sub-steps (start_at_sigma < 0 means no upper bound)."""
    upper = float("inf") if start_at_sigma < 0 else start_at_sigma
    fractions = SPACINGS[spacing](torch.linspace(0, 1, steps + 1, device=sigmas.device)[1:-1])
    out: list[float] = []
    for i in range(len(sigmas) - 1):
        here, nxt = sigmas[i], sigmas[i + 1]
        out.append(float(here))
        if end_at_sigma <= here <= upper:
            out.extend((here + fractions * (nxt - here)).tolist())
    if len(sigmas) > 0:
        out.append(float(sigmas[-1]))
    return torch.FloatTensor(out)


class ExtendIntermediateSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ExtendIntermediateSigmas", category=SIGMA_CATEGORY, inputs=[
            io.Sigmas.Input("sigmas"), io.Int.Input("steps", default=2, min=1, max=100),
            io.Float.Input("start_at_sigma", default=-1.0, min=-1.0, max=20000.0, step=0.01, round=False),
            io.Float.Input("end_at_sigma", default=12.0, min=0.0, max=20000.0, step=0.01, round=False),
            io.Combo.Input("spacing", options=list(SPACINGS))],
            outputs=[io.Sigmas.Output()])

    @classmethod
    def execute(cls, sigmas, steps, start_at_sigma, end_at_sigma, spacing):
        return io.NodeOutput(extend_sigmas(sigmas, steps, start_at_sigma, end_at_sigma, spacing))


class SamplingPercentToSigma(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SamplingPercentToSigma", category=SIGMA_CATEGORY, inputs=[
            io.Model.Input("model"),
            io.Float.Input("sampling_percent", default=0.0, min=0.0, max=1.0, step=0.0001),
            io.Boolean.Input("return_actual_sigma", default=False,
                             tooltip="Return the actual sigma value instead of the value used for interval "
                                     "checks.\nThis only affects results at 0.0 and 1.0.")],
            outputs=[io.Float.Output(display_name="sigma_value")])

    @classmethod
    def execute(cls, model, sampling_percent, return_actual_sigma):
        ms = model_sampling(model)
        sigma = ms.percent_to_sigma(sampling_percent)
        # percent_to_sigma answers the ends with sentinels (never / always reached); the real ends differ
        if return_actual_sigma and sampling_percent == 0.0:
            sigma = float(ms.sigma_max)
        elif return_actual_sigma and sampling_percent == 1.0:
            sigma = float(ms.sigma_min)
        return io.NodeOutput(sigma)


class SamplerER_SDE(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SamplerER_SDE", category=SAMPLER_CATEGORY, inputs=[
            io.Combo.Input("solver_type", options=["ER-SDE", "Reverse-time SDE", "ODE"]),
            io.Int.Input("max_stage", default=3, min=1, max=3),
            io.Float.Input("eta", default=1.0, min=0.0, max=100.0, step=0.01, round=False,
                           tooltip="Stochastic strength of reverse-time SDE.\nWhen eta=0, it reduces to "
                                   "deterministic ODE. This setting doesn't apply to ER-SDE solver type."),
            io.Float.Input("s_noise", default=1.0, min=0.0, max=100.0, step=0.01, round=False)],
            outputs=[io.Sampler.Output()])

    @classmethod
    def execute(cls, solver_type, max_stage, eta, s_noise):
        if solver_type == "ODE" or (solver_type == "Reverse-time SDE" and eta == 0):
            eta, s_noise = 0, 0
        noise_scaler = None  # ER-SDE: the sampler's own noise scaler
        if solver_type != "ER-SDE":
            def noise_scaler(x):  # the reverse-time SDE's: x^(eta + 1)
                return x ** (eta + 1)
        return io.NodeOutput(ksampler.sampler_object("er_sde", {"s_noise": s_noise, "noise_scaler": noise_scaler,
                                                                "max_stage": max_stage}))


class AddNoise(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="AddNoise", category="_for_testing/custom_sampling/noise", is_experimental=True,
                         inputs=[io.Model.Input("model"), io.Noise.Input("noise"), io.Sigmas.Input("sigmas"),
                                 io.Latent.Input("latent_image")],
                         outputs=[io.Latent.Output()])

    @classmethod
    def execute(cls, model, noise, sigmas, latent_image):
        if len(sigmas) == 0:
            return io.NodeOutput(latent_image)
        samples = latent_image["samples"]
        drawn = noise.generate_noise(latent_image)
        ms = model_sampling(model)
        get = model.get_model_object if hasattr(model, "get_model_object") else \
            (lambda name: getattr(model.model, name))
        # the noise of the whole span: first to last sigma (or the single sigma given)
        scale = torch.abs(sigmas[0] - sigmas[-1]) if len(sigmas) > 1 else sigmas[0]
        if torch.count_nonzero(samples) > 0:  # an empty latent stays unshifted
            samples = get("process_latent_in")(samples)
        noisy = get("process_latent_out")(ms.noise_scaling(scale, drawn, samples))
        noisy = torch.nan_to_num(noisy, nan=0.0, posinf=0.0, neginf=0.0)
        return io.NodeOutput({**latent_image, "samples": noisy})


V3_NODES = [ExtendIntermediateSigmas, SamplingPercentToSigma, SamplerER_SDE, AddNoise]
