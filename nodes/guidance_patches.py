"""MODEL patches that change the guidance (V3 nodes, each reported under its ComfyUI module):
Self-Attention Guidance (nodes_sag), Perturbed-Attention Guidance (nodes_pag), CFG-Zero* and
CFGNorm (nodes_cfg), Perp-Neg and its guider (nodes_perpneg), Differential Diffusion
(nodes_differential_diffusion).

They hook the sampler (models/sampling/guidance.py): sampler_cfg_function,
sampler_post_cfg_function (which may call the model again with calc_cond_batch),
attention replacements in transformer_options, and the denoise-mask function."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from models.attention import attention
from models.model_patcher import set_model_options_patch_replace
from models.sampling import ksampler
from models.sampling.guidance import calc_cond_batch
from nodes import v3 as io
from nodes.conditioning import set_values


# -- Self-Attention Guidance ---------------------------------------------------------------
def attention_with_scores(q, k, v, heads: int):
    """Plain softmax attention on [B, L, heads*d] that also returns the [B*heads, Lq, Lk] scores."""
    b, _, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(b, -1, heads, d).permute(0, 2, 1, 3).reshape(b * heads, -1, d) for t in (q, k, v))
    scores = (torch.bmm(q, k.transpose(1, 2)) * d ** -0.5).softmax(dim=-1)
    out = torch.bmm(scores.to(v.dtype), v)
    return out.reshape(b, heads, -1, d).permute(0, 2, 1, 3).reshape(b, -1, inner), scores


def gaussian_blur(img: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian (pixel-unit sigma) per channel of [B,C,H,W], reflect-padded."""
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    k1 = (pdf / pdf.sum()).to(device=img.device, dtype=img.dtype)
    kernel = torch.outer(k1, k1).expand(img.shape[-3], 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    return F.conv2d(F.pad(img, [pad] * 4, mode="reflect"), kernel, groups=img.shape[-3])


def _grid_for(total: int, lh: int, lw: int) -> tuple[int, int]:
    """The (rows, cols) factorisation of `total` attention tokens nearest the latent's aspect."""
    guess = round(math.sqrt((lh / lw) * total))
    for i in range(math.floor(math.sqrt(total) / 2)):
        for rows in (guess + i, max(1, guess - i)):
            if total % rows == 0:
                return rows, total // rows
    raise ValueError(f"Self-Attention Guidance: cannot lay {total} attention tokens out as a grid")


def blur_where_attended(x0: torch.Tensor, scores: torch.Tensor, sigma: float, threshold: float = 1.0):
    """x0 blurred where the middle block's self-attention is concentrated (the tokens that
    receive more than `threshold` total attention, averaged over heads)."""
    b, _, lh, lw = x0.shape
    hw1, hw2 = scores.shape[-2:]
    mask = scores.reshape(b, -1, hw1, hw2).mean(1).sum(1) > threshold
    rows, cols = _grid_for(mask.shape[-1], lh, lw)
    mask = F.interpolate(mask.reshape(b, rows, cols).unsqueeze(1).to(scores.dtype), (lh, lw))
    return gaussian_blur(x0, 9, sigma) * mask + x0 * (1 - mask)


class SelfAttentionGuidance(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_sag"

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SelfAttentionGuidance", display_name="Self-Attention Guidance",
                         category="_for_testing", is_experimental=True, inputs=[
                             io.Model.Input("model"),
                             io.Float.Input("scale", default=0.5, min=-2.0, max=5.0, step=0.01),
                             io.Float.Input("blur_sigma", default=2.0, min=0.0, max=10.0, step=0.1)],
                         outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, scale, blur_sigma):
        m = model.clone()
        recorded = {}

        def record_uncond_attention(q, k, v, extra):
            # the uncond half of a batched call: attend explicitly and keep its scores
            heads, which = extra["n_heads"], extra["cond_or_uncond"]
            if 1 not in which:
                return attention(q, k, v, heads)
            out, scores = attention_with_scores(q, k, v, heads)
            per_chunk = heads * (q.shape[0] // len(which))
            i = which.index(1)
            recorded["scores"] = scores[per_chunk * i:per_chunk * (i + 1)]
            return out

        def guide(args):
            denoised = args["denoised"]
            if min(denoised.shape[2:]) <= 4 or "scores" not in recorded:  # too small to pad the blur
                return denoised
            uncond_pred, x = args["uncond_denoised"], args["input"]
            degraded = blur_where_attended(uncond_pred, recorded["scores"], blur_sigma)
            (sag,) = calc_cond_batch(args["model"], [args["uncond"]], degraded + x - uncond_pred, args["sigma"],
                                     args["model_options"])
            return denoised + (degraded - sag) * scale

        m.set_model_sampler_post_cfg_function(guide, disable_cfg1_optimization=True)
        m.set_model_attn1_replace(record_uncond_attention, "middle", 0, 0)
        return io.NodeOutput(m)


# -- Perturbed-Attention Guidance ----------------------------------------------------------
class PerturbedAttentionGuidance(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_pag"

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="PerturbedAttentionGuidance", category="model_patches/unet", inputs=[
            io.Model.Input("model"),
            io.Float.Input("scale", default=3.0, min=0.0, max=100.0, step=0.01, round=0.01)],
            outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, scale):
        m = model.clone()

        def identity_attention(q, k, v, extra, mask=None):
            return v  # each token attends only to itself

        def guide(args):
            if scale == 0:
                return args["denoised"]
            options = set_model_options_patch_replace(args["model_options"].copy(), identity_attention,
                                                      "attn1", "middle", 0)
            (perturbed,) = calc_cond_batch(args["model"], [args["cond"]], args["input"], args["sigma"], options)
            return args["denoised"] + (args["cond_denoised"] - perturbed) * scale

        m.set_model_sampler_post_cfg_function(guide)
        return io.NodeOutput(m)


# -- CFG-Zero* and CFGNorm -----------------------------------------------------------------
def projection_scale(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """<p, n> / |n|^2 per batch item (the least-squares scale of n towards p)."""
    p, n = positive.reshape(positive.shape[0], -1), negative.reshape(negative.shape[0], -1)
    st = (p * n).sum(dim=1, keepdim=True) / ((n ** 2).sum(dim=1, keepdim=True) + 1e-8)
    return st.reshape([positive.shape[0]] + [1] * (positive.ndim - 1))


class CFGZeroStar(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_cfg"

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="CFGZeroStar", category="advanced/guidance", inputs=[io.Model.Input("model")],
                         outputs=[io.Model.Output(display_name="patched_model")])

    @classmethod
    def execute(cls, model):
        m = model.clone()

        def zero_star(args):
            # the uncond prediction is scaled by alpha (projection of the cond noise on the uncond noise)
            x, cond, uncond, scale = args["input"], args["cond_denoised"], args["uncond_denoised"], args["cond_scale"]
            alpha = projection_scale(x - cond, x - uncond)
            return args["denoised"] + uncond * (alpha - 1.0) + scale * uncond * (1.0 - alpha)

        m.set_model_sampler_post_cfg_function(zero_star)
        return io.NodeOutput(m)


class CFGNorm(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_cfg"

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="CFGNorm", category="advanced/guidance", is_experimental=True, inputs=[
            io.Model.Input("model"),
            io.Float.Input("strength", default=1.0, min=0.0, max=100.0, step=0.01)],
            outputs=[io.Model.Output(display_name="patched_model")])

    @classmethod
    def execute(cls, model, strength):
        m = model.clone()

        def norm_cap(args):
            # per pixel, the guided result's channel norm is capped at the cond prediction's
            guided = args["denoised"]
            ratio = torch.norm(args["cond_denoised"], dim=1, keepdim=True) / (torch.norm(guided, dim=1, keepdim=True)
                                                                             + 1e-8)
            return guided * ratio.clamp(min=0.0, max=1.0) * strength

        m.set_model_sampler_post_cfg_function(norm_cap)
        return io.NodeOutput(m)


# -- Perp-Neg ------------------------------------------------------------------------------
def perp_neg(pos_pred, neg_pred, empty_pred, neg_scale: float, cond_scale: float) -> torch.Tensor:
    """CFG around the empty prompt, with only the part of the negative direction that is
    perpendicular to the positive direction subtracted (one projection over the whole batch)."""
    pos, neg = pos_pred - empty_pred, neg_pred - empty_pred
    perpendicular = neg - ((neg * pos).sum() / torch.norm(pos) ** 2) * pos
    return empty_pred + cond_scale * (pos - perpendicular * neg_scale)


class PerpNeg(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_perpneg"

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="PerpNeg", display_name="Perp-Neg (DEPRECATED by PerpNegGuider)",
                         category="_for_testing", is_experimental=True, is_deprecated=True, inputs=[
                             io.Model.Input("model"),
                             io.Conditioning.Input("empty_conditioning"),
                             io.Float.Input("neg_scale", default=1.0, min=0.0, max=100.0, step=0.01)],
                         outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, empty_conditioning, neg_scale):
        m = model.clone()
        empty = ksampler.convert_cond(empty_conditioning)

        def guided(args):
            x, sigma, inner = args["input"], args["sigma"], args["model"]
            entries = [dict(c) for c in empty]
            ksampler._encode_model_conds(inner, entries, x, x.device, "negative")
            (empty_pred,) = calc_cond_batch(inner, [entries], x, sigma, args["model_options"])
            return x - perp_neg(args["cond_denoised"], args["uncond_denoised"], empty_pred, neg_scale,
                                args["cond_scale"])

        m.set_model_sampler_cfg_function(guided)
        return io.NodeOutput(m)


class PerpNegCFG(ksampler.CFGGuider):
    """Positive, negative and empty prompt evaluated in one batch, combined by perp_neg; the
    pre- and post-CFG hooks still run."""

    def set_conds(self, positive, negative, empty_negative_prompt):
        empty = set_values(empty_negative_prompt, {"prompt_type": "negative"})
        self.inner_set_conds({"positive": positive, "empty_negative_prompt": empty, "negative": negative})

    def set_cfg(self, cfg, neg_scale):
        self.cfg, self.neg_scale = cfg, neg_scale

    def predict_noise(self, x, sigma, model_options=None, seed=None):
        model_options = model_options or {}
        pos, neg, empty = (self.conds.get(k) for k in ("positive", "negative", "empty_negative_prompt"))
        if not model_options.get("disable_cfg1_optimization", False) and math.isclose(self.neg_scale, 0.0):
            neg = None
            if math.isclose(self.cfg, 1.0):
                empty = None
        conds = [pos, neg, empty]
        out = calc_cond_batch(self.inner_model, conds, x, sigma, model_options)
        for fn in model_options.get("sampler_pre_cfg_function", []):
            out = fn({"conds": conds, "conds_out": out, "cond_scale": self.cfg, "timestep": sigma, "input": x,
                      "sigma": sigma, "model": self.inner_model, "model_options": model_options})
        pos_pred, neg_pred, empty_pred = out
        result = perp_neg(pos_pred, neg_pred, empty_pred, self.neg_scale, self.cfg)
        for fn in model_options.get("sampler_post_cfg_function", []):
            result = fn({"denoised": result, "cond": pos, "uncond": neg, "cond_scale": self.cfg,
                         "model": self.inner_model, "uncond_denoised": neg_pred, "cond_denoised": pos_pred,
                         "sigma": sigma, "model_options": model_options, "input": x, "empty_cond": empty,
                         "empty_cond_denoised": empty_pred})
        return result


class PerpNegGuider(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_perpneg"

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="PerpNegGuider", category="_for_testing", is_experimental=True, inputs=[
            io.Model.Input("model"),
            io.Conditioning.Input("positive"),
            io.Conditioning.Input("negative"),
            io.Conditioning.Input("empty_conditioning"),
            io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
            io.Float.Input("neg_scale", default=1.0, min=0.0, max=100.0, step=0.01)],
            outputs=[io.Guider.Output()])

    @classmethod
    def execute(cls, model, positive, negative, empty_conditioning, cfg, neg_scale):
        guider = PerpNegCFG(model)
        guider.set_conds(positive, negative, empty_conditioning)
        guider.set_cfg(cfg, neg_scale)
        return io.NodeOutput(guider)


# -- Differential Diffusion ----------------------------------------------------------------
def differential_mask(sigma, denoise_mask, extra_options: dict, strength: float = 1.0):
    """The soft inpainting mask turned binary per step: a pixel is denoised once the run's
    progress (in timesteps, from the first sigma to the last) reaches its mask value;
    strength < 1 blends back towards the soft mask."""
    ms = extra_options["model"].inner_model.model_sampling
    step_sigmas = extra_options["sigmas"]
    sigma_to = ms.sigma_min
    if step_sigmas[-1] > sigma_to:
        sigma_to = step_sigmas[-1]
    ts_from, ts_to = ms.timestep(step_sigmas[0]), ms.timestep(sigma_to)
    threshold = (ms.timestep(sigma[0]) - ts_to) / (ts_from - ts_to)
    binary = (denoise_mask >= threshold).to(denoise_mask.dtype)
    if strength and strength < 1:
        return strength * binary + (1 - strength) * denoise_mask
    return binary


class DifferentialDiffusion(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_differential_diffusion"

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="DifferentialDiffusion", display_name="Differential Diffusion",
                         category="_for_testing", is_experimental=True, inputs=[
                             io.Model.Input("model"),
                             io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.01, optional=True)],
                         outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, strength=1.0):
        m = model.clone()
        m.set_model_denoise_mask_function(
            lambda sigma, denoise_mask, extra_options: differential_mask(sigma, denoise_mask, extra_options, strength))
        return io.NodeOutput(m)


V3_NODES = [SelfAttentionGuidance, PerturbedAttentionGuidance, CFGZeroStar, CFGNorm, PerpNeg, PerpNegGuider,
            DifferentialDiffusion]
