"""Custom-sampling schedule nodes: each outputs SIGMAS (ComfyUI's nodes_custom_sampler and
nodes_align_your_steps, V3)."""
from __future__ import annotations

import numpy as np
import torch

from models.sampling import schedulers as sch
from nodes import v3 as io

CATEGORY = "sampling/custom_sampling/schedulers"
SIGMA_MAX, SIGMA_MIN = 14.614642, 0.0291675


def model_sampling(model):
    """The DiscreteSchedule of a MODEL (ComfyUI's model.get_model_object("model_sampling"))."""
    if hasattr(model, "get_model_object"):
        return model.get_model_object("model_sampling")
    return model.model.model_sampling


def _steps(default=20, maximum=10000):
    return io.Int.Input("steps", default=default, min=1, max=maximum)


def _f(name, default, minimum=0.0, maximum=5000.0, step=0.01):
    return io.Float.Input(name, default=default, min=minimum, max=maximum, step=step, round=False)


def _schema(node_id, inputs, category=CATEGORY):
    return io.Schema(node_id=node_id, category=category, inputs=inputs, outputs=[io.Sigmas.Output()])


class BasicScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema("BasicScheduler", [io.Model.Input("model"),
                                          io.Combo.Input("scheduler", options=sch.SCHEDULER_NAMES), _steps(),
                                          io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01)])

    @classmethod
    def execute(cls, model, scheduler, steps, denoise):
        total = steps
        if denoise < 1.0:
            if denoise <= 0.0:
                return io.NodeOutput(torch.FloatTensor([]))
            total = int(steps / denoise)
        sigmas = sch.calculate_sigmas(model_sampling(model), scheduler, total).cpu()
        return io.NodeOutput(sigmas[-(steps + 1):])


class KarrasScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema("KarrasScheduler", [_steps(), _f("sigma_max", SIGMA_MAX), _f("sigma_min", SIGMA_MIN),
                                           _f("rho", 7.0, maximum=100.0)])

    @classmethod
    def execute(cls, steps, sigma_max, sigma_min, rho):
        return io.NodeOutput(sch.karras(steps, sigma_min, sigma_max, rho))


class ExponentialScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema("ExponentialScheduler", [_steps(), _f("sigma_max", SIGMA_MAX), _f("sigma_min", SIGMA_MIN)])

    @classmethod
    def execute(cls, steps, sigma_max, sigma_min):
        return io.NodeOutput(sch.exponential(steps, sigma_min, sigma_max))


class PolyexponentialScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema("PolyexponentialScheduler", [_steps(), _f("sigma_max", SIGMA_MAX), _f("sigma_min", SIGMA_MIN),
                                                    _f("rho", 1.0, maximum=100.0)])

    @classmethod
    def execute(cls, steps, sigma_max, sigma_min, rho):
        return io.NodeOutput(sch.polyexponential(steps, sigma_min, sigma_max, rho))


class LaplaceScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema("LaplaceScheduler", [_steps(), _f("sigma_max", SIGMA_MAX), _f("sigma_min", SIGMA_MIN),
                                            _f("mu", 0.0, -10.0, 10.0, 0.1), _f("beta", 0.5, 0.0, 10.0, 0.1)])

    @classmethod
    def execute(cls, steps, sigma_max, sigma_min, mu, beta):
        return io.NodeOutput(sch.laplace(steps, sigma_min, sigma_max, mu, beta))


class SDTurboScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema("SDTurboScheduler", [io.Model.Input("model"), _steps(1, 10),
                                            io.Float.Input("denoise", default=1.0, min=0, max=1.0, step=0.01)])

    @classmethod
    def execute(cls, model, steps, denoise):
        return io.NodeOutput(sch.sd_turbo(model_sampling(model), steps, denoise))


class BetaSamplingScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema("BetaSamplingScheduler", [io.Model.Input("model"), _steps(), _f("alpha", 0.6, maximum=50.0),
                                                 _f("beta", 0.6, maximum=50.0)])

    @classmethod
    def execute(cls, model, steps, alpha, beta):
        return io.NodeOutput(sch.beta(model_sampling(model), steps, alpha, beta))


class VPScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema("VPScheduler", [_steps(), _f("beta_d", 19.9), _f("beta_min", 0.1),
                                       _f("eps_s", 0.001, maximum=1.0, step=0.0001)])

    @classmethod
    def execute(cls, steps, beta_d, beta_min, eps_s):
        return io.NodeOutput(sch.vp(steps, beta_d, beta_min, eps_s))


AYS_LEVELS = {
    "SD1": [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092, 0.9642583904,
            0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582],
    "SDXL": [14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141, 0.5550693289,
             0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582],
    "SVD": [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002],
}


def loglinear_interp(levels, n):
    """Resample a decreasing sequence to n points, linearly in log space."""
    xs = np.linspace(0, 1, len(levels))
    ys = np.log(levels[::-1])
    return np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1].copy()


class AlignYourStepsScheduler(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_align_your_steps"

    @classmethod
    def define_schema(cls):
        return _schema("AlignYourStepsScheduler", [io.Combo.Input("model_type", options=["SD1", "SDXL", "SVD"]),
                                                   _steps(10),
                                                   io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01)])

    @classmethod
    def execute(cls, model_type, steps, denoise):
        total = steps
        if denoise < 1.0:
            if denoise <= 0.0:
                return io.NodeOutput(torch.FloatTensor([]))
            total = round(steps * denoise)
        sigmas = AYS_LEVELS[model_type][:]
        if steps + 1 != len(sigmas):
            sigmas = loglinear_interp(sigmas, steps + 1)
        sigmas = sigmas[-(total + 1):]
        sigmas[-1] = 0
        return io.NodeOutput(torch.FloatTensor(sigmas))


SIGMA_CATEGORY = "sampling/custom_sampling/sigmas"


class SplitSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SplitSigmas", category=SIGMA_CATEGORY,
                         inputs=[io.Sigmas.Input("sigmas"), io.Int.Input("step", default=0, min=0, max=10000)],
                         outputs=[io.Sigmas.Output(display_name="high_sigmas"),
                                  io.Sigmas.Output(display_name="low_sigmas")])

    @classmethod
    def execute(cls, sigmas, step):
        return io.NodeOutput(sigmas[:step + 1], sigmas[step:])


class SplitSigmasDenoise(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SplitSigmasDenoise", category=SIGMA_CATEGORY,
                         inputs=[io.Sigmas.Input("sigmas"),
                                 io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01)],
                         outputs=[io.Sigmas.Output(display_name="high_sigmas"),
                                  io.Sigmas.Output(display_name="low_sigmas")])

    @classmethod
    def execute(cls, sigmas, denoise):
        total = round(max(sigmas.shape[-1] - 1, 0) * denoise)
        return io.NodeOutput(sigmas[:-total], sigmas[-(total + 1):])


class FlipSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="FlipSigmas", category=SIGMA_CATEGORY, inputs=[io.Sigmas.Input("sigmas")],
                         outputs=[io.Sigmas.Output()])

    @classmethod
    def execute(cls, sigmas):
        if len(sigmas) == 0:
            return io.NodeOutput(sigmas)
        sigmas = sigmas.flip(0)
        if sigmas[0] == 0:
            sigmas[0] = 0.0001  # a zero start would divide by zero
        return io.NodeOutput(sigmas)


class SetFirstSigma(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SetFirstSigma", category=SIGMA_CATEGORY,
                         inputs=[io.Sigmas.Input("sigmas"), _f("sigma", 136.0, maximum=20000.0, step=0.001)],
                         outputs=[io.Sigmas.Output()])

    @classmethod
    def execute(cls, sigmas, sigma):
        sigmas = sigmas.clone()
        sigmas[0] = sigma
        return io.NodeOutput(sigmas)


V3_NODES = [BasicScheduler, KarrasScheduler, ExponentialScheduler, PolyexponentialScheduler, LaplaceScheduler,
            SDTurboScheduler, BetaSamplingScheduler, VPScheduler, AlignYourStepsScheduler, SplitSigmas,
            SplitSigmasDenoise, FlipSigmas, SetFirstSigma]
