"""Custom sampling (ComfyUI's nodes_custom_sampler, V3): SAMPLER, NOISE and GUIDER values and
the SamplerCustom / SamplerCustomAdvanced nodes that combine them."""
from __future__ import annotations

import math

import torch

from models.sampling import ksampler
from models.sampling.guidance import calc_cond_batch, cfg_function
from models.sampling.noise import initial_noise
from models.sampling.samplers import SAMPLER_NAMES
from models.sampling.samplers_sa import tau_window
from nodes import v3 as io
from nodes.conditioning import set_values
from nodes.sampling import fix_empty_latent_channels, step_callback
from nodes.sampling_schedulers import model_sampling

SAMPLER_CATEGORY = "sampling/custom_sampling/samplers"
SEED_MAX = 0xFFFFFFFFFFFFFFFF


def _f(name, default=1.0, minimum=0.0, maximum=100.0, **kw):
    return io.Float.Input(name, default=default, min=minimum, max=maximum, step=0.01, round=False, **kw)


def _sampler_schema(node_id, inputs, display_name=None):
    return io.Schema(node_id=node_id, display_name=display_name, category=SAMPLER_CATEGORY, inputs=inputs,
                     outputs=[io.Sampler.Output()])


def _device(name, noise_device):
    return name if noise_device == "cpu" else name + "_gpu"


class KSamplerSelect(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _sampler_schema("KSamplerSelect", [io.Combo.Input("sampler_name", options=SAMPLER_NAMES)])

    @classmethod
    def execute(cls, sampler_name):
        return io.NodeOutput(ksampler.sampler_object(sampler_name))


class SamplerDPMPP_3M_SDE(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _sampler_schema("SamplerDPMPP_3M_SDE", [_f("eta"), _f("s_noise"),
                                                       io.Combo.Input("noise_device", options=["gpu", "cpu"])])

    @classmethod
    def execute(cls, eta, s_noise, noise_device):
        return io.NodeOutput(ksampler.sampler_object(_device("dpmpp_3m_sde", noise_device),
                                                     {"eta": eta, "s_noise": s_noise}))


class SamplerDPMPP_2M_SDE(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _sampler_schema("SamplerDPMPP_2M_SDE", [io.Combo.Input("solver_type", options=["midpoint", "heun"]),
                                                       _f("eta"), _f("s_noise"),
                                                       io.Combo.Input("noise_device", options=["gpu", "cpu"])])

    @classmethod
    def execute(cls, solver_type, eta, s_noise, noise_device):
        return io.NodeOutput(ksampler.sampler_object(_device("dpmpp_2m_sde", noise_device),
                                                     {"eta": eta, "s_noise": s_noise, "solver_type": solver_type}))


class SamplerDPMPP_SDE(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _sampler_schema("SamplerDPMPP_SDE", [_f("eta"), _f("s_noise"), _f("r", 0.5),
                                                    io.Combo.Input("noise_device", options=["gpu", "cpu"])])

    @classmethod
    def execute(cls, eta, s_noise, r, noise_device):
        return io.NodeOutput(ksampler.sampler_object(_device("dpmpp_sde", noise_device),
                                                     {"eta": eta, "s_noise": s_noise, "r": r}))


class SamplerDPMPP_2S_Ancestral(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _sampler_schema("SamplerDPMPP_2S_Ancestral", [_f("eta"), _f("s_noise")])

    @classmethod
    def execute(cls, eta, s_noise):
        return io.NodeOutput(ksampler.sampler_object("dpmpp_2s_ancestral", {"eta": eta, "s_noise": s_noise}))


class SamplerEulerAncestral(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _sampler_schema("SamplerEulerAncestral", [_f("eta"), _f("s_noise")])

    @classmethod
    def execute(cls, eta, s_noise):
        return io.NodeOutput(ksampler.sampler_object("euler_ancestral", {"eta": eta, "s_noise": s_noise}))


class SamplerEulerAncestralCFGPP(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _sampler_schema("SamplerEulerAncestralCFGPP", [_f("eta", maximum=1.0), _f("s_noise", maximum=10.0)],
                               display_name="SamplerEulerAncestralCFG++")

    @classmethod
    def execute(cls, eta, s_noise):
        return io.NodeOutput(ksampler.sampler_object("euler_ancestral_cfg_pp", {"eta": eta, "s_noise": s_noise}))


class SamplerLMS(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _sampler_schema("SamplerLMS", [io.Int.Input("order", default=4, min=1, max=100)])

    @classmethod
    def execute(cls, order):
        return io.NodeOutput(ksampler.sampler_object("lms", {"order": order}))


class SamplerDPMAdaptative(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _sampler_schema("SamplerDPMAdaptative", [
            io.Int.Input("order", default=3, min=2, max=3), _f("rtol", 0.05), _f("atol", 0.0078), _f("h_init", 0.05),
            _f("pcoeff", 0.0), _f("icoeff", 1.0), _f("dcoeff", 0.0), _f("accept_safety", 0.81), _f("eta", 0.0),
            _f("s_noise", 1.0)])

    @classmethod
    def execute(cls, order, rtol, atol, h_init, pcoeff, icoeff, dcoeff, accept_safety, eta, s_noise):
        return io.NodeOutput(ksampler.sampler_object("dpm_adaptive", {
            "order": order, "rtol": rtol, "atol": atol, "h_init": h_init, "pcoeff": pcoeff, "icoeff": icoeff,
            "dcoeff": dcoeff, "accept_safety": accept_safety, "eta": eta, "s_noise": s_noise}))


class SamplerSASolver(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _sampler_schema("SamplerSASolver", [
            io.Model.Input("model"), _f("eta", 1.0, maximum=10.0),
            io.Float.Input("sde_start_percent", default=0.2, min=0.0, max=1.0, step=0.001),
            io.Float.Input("sde_end_percent", default=0.8, min=0.0, max=1.0, step=0.001), _f("s_noise"),
            io.Int.Input("predictor_order", default=3, min=1, max=6),
            io.Int.Input("corrector_order", default=4, min=0, max=6),
            io.Boolean.Input("use_pece"), io.Boolean.Input("simple_order_2")])

    @classmethod
    def execute(cls, model, eta, sde_start_percent, sde_end_percent, s_noise, predictor_order, corrector_order,
                use_pece, simple_order_2):
        ms = model_sampling(model)
        start, end = ms.percent_to_sigma(sde_start_percent), ms.percent_to_sigma(sde_end_percent)
        return io.NodeOutput(ksampler.sampler_object("sa_solver", {
            "tau_func": tau_window(start, end, eta), "s_noise": s_noise, "predictor_order": predictor_order,
            "corrector_order": corrector_order, "use_pece": use_pece, "simple_order_2": simple_order_2}))


# -- noise -------------------------------------------------------------------------------

class EmptyNoise:
    seed = 0

    def generate_noise(self, latent):
        s = latent["samples"]
        return torch.zeros(s.shape, dtype=s.dtype, layout=s.layout, device="cpu")


class SeededNoise:
    def __init__(self, seed):
        self.seed = seed

    def generate_noise(self, latent):
        return initial_noise(latent["samples"], self.seed, latent.get("batch_index"))


class DisableNoise(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="DisableNoise", category="sampling/custom_sampling/noise", inputs=[],
                         outputs=[io.Noise.Output()])

    @classmethod
    def execute(cls):
        return io.NodeOutput(EmptyNoise())


class RandomNoise(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="RandomNoise", category="sampling/custom_sampling/noise",
                         inputs=[io.Int.Input("noise_seed", default=0, min=0, max=SEED_MAX, control_after_generate=True)],
                         outputs=[io.Noise.Output()])

    @classmethod
    def execute(cls, noise_seed):
        return io.NodeOutput(SeededNoise(noise_seed))


# -- guiders ------------------------------------------------------------------------------

class PositiveOnlyGuider(ksampler.CFGGuider):
    def set_conds(self, positive):
        self.inner_set_conds({"positive": positive})


class DualCFG(ksampler.CFGGuider):
    """Two guidance scales: cond1 over cond2, and cond2 over the negative (regular or nested)."""

    def set_cfg(self, cfg1, cfg2, nested=False):
        self.cfg1, self.cfg2, self.nested = cfg1, cfg2, nested

    def set_conds(self, positive, middle, negative):
        middle = set_values(middle, {"prompt_type": "negative"})
        self.inner_set_conds({"positive": positive, "middle": middle, "negative": negative})

    def predict_noise(self, x, sigma, model_options=None, seed=None):
        model_options = model_options or {}
        neg, mid, pos = self.conds.get("negative"), self.conds.get("middle"), self.conds.get("positive")
        if self.nested:
            out = calc_cond_batch(self.inner_model, [neg, mid, pos], x, sigma, model_options)
            text = cfg_function(self.inner_model, out[2], out[1], self.cfg1, x, sigma, model_options, pos, mid)
            return out[0] + self.cfg2 * (text - out[0])
        if not model_options.get("disable_cfg1_optimization", False) and math.isclose(self.cfg2, 1.0):
            neg = None
            if math.isclose(self.cfg1, 1.0):
                mid = None
        out = calc_cond_batch(self.inner_model, [neg, mid, pos], x, sigma, model_options)
        return cfg_function(self.inner_model, out[1], out[0], self.cfg2, x, sigma, model_options, mid, neg) \
            + (out[2] - out[1]) * self.cfg1


GUIDER_CATEGORY = "sampling/custom_sampling/guiders"
CFG_INPUT = dict(default=8.0, min=0.0, max=100.0, step=0.1, round=0.01)


class BasicGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="BasicGuider", category=GUIDER_CATEGORY,
                         inputs=[io.Model.Input("model"), io.Conditioning.Input("conditioning")],
                         outputs=[io.Guider.Output()])

    @classmethod
    def execute(cls, model, conditioning):
        guider = PositiveOnlyGuider(model)
        guider.set_conds(conditioning)
        return io.NodeOutput(guider)


class CFGGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="CFGGuider", category=GUIDER_CATEGORY,
                         inputs=[io.Model.Input("model"), io.Conditioning.Input("positive"),
                                 io.Conditioning.Input("negative"), io.Float.Input("cfg", **CFG_INPUT)],
                         outputs=[io.Guider.Output()])

    @classmethod
    def execute(cls, model, positive, negative, cfg):
        guider = ksampler.CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return io.NodeOutput(guider)


class DualCFGGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="DualCFGGuider", category=GUIDER_CATEGORY,
                         inputs=[io.Model.Input("model"), io.Conditioning.Input("cond1"), io.Conditioning.Input("cond2"),
                                 io.Conditioning.Input("negative"), io.Float.Input("cfg_conds", **CFG_INPUT),
                                 io.Float.Input("cfg_cond2_negative", **CFG_INPUT),
                                 io.Combo.Input("style", options=["regular", "nested"])],
                         outputs=[io.Guider.Output()])

    @classmethod
    def execute(cls, model, cond1, cond2, negative, cfg_conds, cfg_cond2_negative, style):
        guider = DualCFG(model)
        guider.set_conds(cond1, cond2, negative)
        guider.set_cfg(cfg_conds, cfg_cond2_negative, nested=style == "nested")
        return io.NodeOutput(guider)


# -- the sampling nodes ------------------------------------------------------------------------

def _run(guider, noise, sampler, sigmas, latent):
    latent = latent.copy()
    latent["samples"] = fix_empty_latent_channels(guider.model_patcher, latent["samples"])
    x0 = {}
    callback = step_callback(guider.model_patcher, sigmas.shape[-1] - 1, x0)
    samples = guider.sample(noise.generate_noise(latent), latent["samples"], sampler, sigmas,
                            denoise_mask=latent.get("noise_mask"), callback=callback, seed=noise.seed)
    out = {**latent, "samples": samples.cpu()}
    denoised = out
    if "x0" in x0:
        denoised = {**latent, "samples": guider.model_patcher.model.latent_format.process_out(x0["x0"].cpu())}
    return io.NodeOutput(out, denoised)


OUTPUTS = [io.Latent.Output(display_name="output"), io.Latent.Output(display_name="denoised_output")]


class SamplerCustom(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SamplerCustom", category="sampling/custom_sampling", inputs=[
            io.Model.Input("model"), io.Boolean.Input("add_noise", default=True),
            io.Int.Input("noise_seed", default=0, min=0, max=SEED_MAX, control_after_generate=True),
            io.Float.Input("cfg", **CFG_INPUT), io.Conditioning.Input("positive"), io.Conditioning.Input("negative"),
            io.Sampler.Input("sampler"), io.Sigmas.Input("sigmas"), io.Latent.Input("latent_image")],
            outputs=[io.Latent.Output(display_name="output"), io.Latent.Output(display_name="denoised_output")])

    @classmethod
    def execute(cls, model, add_noise, noise_seed, cfg, positive, negative, sampler, sigmas, latent_image):
        guider = ksampler.CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        noise = SeededNoise(noise_seed) if add_noise else EmptyNoise()
        if not add_noise:
            noise.seed = noise_seed  # the seed still drives the sampler's own noise
        return _run(guider, noise, sampler, sigmas, latent_image)


class SamplerCustomAdvanced(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SamplerCustomAdvanced", category="sampling/custom_sampling", inputs=[
            io.Noise.Input("noise"), io.Guider.Input("guider"), io.Sampler.Input("sampler"),
            io.Sigmas.Input("sigmas"), io.Latent.Input("latent_image")],
            outputs=[io.Latent.Output(display_name="output"), io.Latent.Output(display_name="denoised_output")])

    @classmethod
    def execute(cls, noise, guider, sampler, sigmas, latent_image):
        return _run(guider, noise, sampler, sigmas, latent_image)


V3_NODES = [KSamplerSelect, SamplerDPMPP_3M_SDE, SamplerDPMPP_2M_SDE, SamplerDPMPP_SDE, SamplerDPMPP_2S_Ancestral,
            SamplerEulerAncestral, SamplerEulerAncestralCFGPP, SamplerLMS, SamplerDPMAdaptative, SamplerSASolver,
            DisableNoise, RandomNoise, BasicGuider, CFGGuider, DualCFGGuider, SamplerCustom, SamplerCustomAdvanced]
