"""ComfyUI's comfy_extras.nodes_advanced_samplers (V3): SamplerLCMUpscale and SamplerEulerCFGpp."""
from __future__ import annotations

from models.sampling import ksampler
from models.sampling.samplers_advanced import sample_euler_pp, sample_lcm_upscale
from nodes import v3 as io
from nodes.sampling_custom import SAMPLER_CATEGORY

UPSCALE_METHODS = ["bislerp", "nearest-exact", "bilinear", "area", "bicubic"]


class SamplerLCMUpscale(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SamplerLCMUpscale", category=SAMPLER_CATEGORY, inputs=[
            io.Float.Input("scale_ratio", default=1.0, min=0.1, max=20.0, step=0.01),
            io.Int.Input("scale_steps", default=-1, min=-1, max=1000, step=1),
            io.Combo.Input("upscale_method", options=UPSCALE_METHODS)],
            outputs=[io.Sampler.Output()])

    @classmethod
    def execute(cls, scale_ratio, scale_steps, upscale_method):
        steps = None if scale_steps < 0 else scale_steps  # -1: about half the schedule
        return io.NodeOutput(ksampler.KSamplerObject(sample_lcm_upscale, {
            "total_upscale": scale_ratio, "upscale_steps": steps, "upscale_method": upscale_method}))


class SamplerEulerCFGpp(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SamplerEulerCFGpp", display_name="SamplerEulerCFG++", category="_for_testing",
                         inputs=[io.Combo.Input("version", options=["regular", "alternative"])],
                         outputs=[io.Sampler.Output()], is_experimental=True)

    @classmethod
    def execute(cls, version):
        if version == "alternative":
            return io.NodeOutput(ksampler.KSamplerObject(sample_euler_pp))
        return io.NodeOutput(ksampler.sampler_object("euler_cfg_pp"))


V3_NODES = [SamplerLCMUpscale, SamplerEulerCFGpp]
