"""MODEL patches that change what happens inside the UNet (V3 nodes, each reported under its
ComfyUI module): FreeU / FreeU_V2 (nodes_freelunch), Kohya's deep shrink
PatchModelAddDownscale (nodes_model_downscale), HyperTile (nodes_hypertile) and the
attention weight multipliers (nodes_attention_multiply).

They use the UNet's patch points (models/unet.py, models/attention.py): output_block_patch
(h, skip, options), input_block_patch(_after_skip) (h, options), attn1_patch (q, k, v,
options) and attn1_output_patch (out, options); the multipliers are weight patches."""
from __future__ import annotations

import logging
import math

import torch

from models.lora.adapters import Adapter
from models.resize import common_upscale
from nodes import v3 as io

UNET_CATEGORY = "model_patches/unet"
ATTENTION_EXPERIMENTS = "_for_testing/attention_experiments"


# -- FreeU ---------------------------------------------------------------------------------
def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """Scale the lowest spatial frequencies (a (2*threshold)^2 square around DC, after
    shifting DC to the centre) by `scale`; computed in float32, returned in x's dtype."""
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    h, w = freq.shape[-2:]
    mask = torch.ones(freq.shape, device=x.device)
    mask[..., h // 2 - threshold:h // 2 + threshold, w // 2 - threshold:w // 2 + threshold] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(x.dtype)


def _filter_skip(skip, scale, cpu_only: set):
    """FreeU's skip filter; devices without torch.fft fall back to the CPU (remembered)."""
    if skip.device not in cpu_only:
        try:
            return fourier_filter(skip, 1, scale)
        except Exception:
            logging.warning("Device %s does not support the torch.fft functions used in the FreeU node, "
                            "switching to CPU.", skip.device)
            cpu_only.add(skip.device)
    return fourier_filter(skip.cpu(), 1, scale).to(skip.device)


def _model_channels(model) -> int:
    return model.model.diffusion_model.model_channels


def freeu_patch(model_channels: int, b1, b2, s1, s2, v2: bool):
    """The output_block_patch: at the decoder stages of width 4x / 2x model_channels, the
    first half of the backbone channels is amplified by b (V2: by 1 + (b-1) * the min-max
    normalised channel mean) and the skip's low frequencies are scaled by s."""
    scales = {model_channels * 4: (b1, s1), model_channels * 2: (b2, s2)}
    cpu_only: set = set()

    def patch(h, skip, transformer_options):
        scale = scales.get(int(h.shape[1]))
        if scale is None:
            return h, skip
        half = h.shape[1] // 2
        factor = scale[0]
        if v2:
            mean = h.mean(1, keepdim=True)
            flat = mean.view(mean.shape[0], -1)
            lo = flat.min(dim=-1).values.view(-1, 1, 1, 1)
            hi = flat.max(dim=-1).values.view(-1, 1, 1, 1)
            factor = (scale[0] - 1) * ((mean - lo) / (hi - lo)) + 1
        h = torch.cat([h[:, :half] * factor, h[:, half:]], dim=1)
        return h, _filter_skip(skip, scale[1], cpu_only)
    return patch


def _freeu_schema(node_id, b1, b2):
    return io.Schema(node_id=node_id, category=UNET_CATEGORY, inputs=[
        io.Model.Input("model"),
        io.Float.Input("b1", default=b1, min=0.0, max=10.0, step=0.01),
        io.Float.Input("b2", default=b2, min=0.0, max=10.0, step=0.01),
        io.Float.Input("s1", default=0.9, min=0.0, max=10.0, step=0.01),
        io.Float.Input("s2", default=0.2, min=0.0, max=10.0, step=0.01)],
        outputs=[io.Model.Output()])


class FreeU(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_freelunch"

    @classmethod
    def define_schema(cls):
        return _freeu_schema("FreeU", 1.1, 1.2)

    @classmethod
    def execute(cls, model, b1, b2, s1, s2):
        m = model.clone()
        m.set_model_output_block_patch(freeu_patch(_model_channels(model), b1, b2, s1, s2, v2=False))
        return io.NodeOutput(m)


class FreeU_V2(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_freelunch"

    @classmethod
    def define_schema(cls):
        return _freeu_schema("FreeU_V2", 1.3, 1.4)

    @classmethod
    def execute(cls, model, b1, b2, s1, s2):
        m = model.clone()
        m.set_model_output_block_patch(freeu_patch(_model_channels(model), b1, b2, s1, s2, v2=True))
        return io.NodeOutput(m)


# -- Kohya deep shrink ---------------------------------------------------------------------
class PatchModelAddDownscale(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_model_downscale"
    UPSCALE_METHODS = ["bicubic", "nearest-exact", "bilinear", "area", "bislerp"]

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="PatchModelAddDownscale", display_name="PatchModelAddDownscale (Kohya Deep Shrink)",
                         category=UNET_CATEGORY, inputs=[
                             io.Model.Input("model"),
                             io.Int.Input("block_number", default=3, min=1, max=32, step=1),
                             io.Float.Input("downscale_factor", default=2.0, min=0.1, max=9.0, step=0.001),
                             io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001),
                             io.Float.Input("end_percent", default=0.35, min=0.0, max=1.0, step=0.001),
                             io.Boolean.Input("downscale_after_skip", default=True),
                             io.Combo.Input("downscale_method", options=cls.UPSCALE_METHODS),
                             io.Combo.Input("upscale_method", options=cls.UPSCALE_METHODS)],
                         outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, block_number, downscale_factor, start_percent, end_percent, downscale_after_skip,
                downscale_method, upscale_method):
        ms = model.get_model_object("model_sampling")
        sigma_start, sigma_end = ms.percent_to_sigma(start_percent), ms.percent_to_sigma(end_percent)

        def shrink(h, transformer_options):
            # only at the chosen input block, and only while sigma is inside the window
            if transformer_options["block"][1] == block_number:
                sigma = transformer_options["sigmas"][0].item()
                if sigma_end <= sigma <= sigma_start:
                    h = common_upscale(h, round(h.shape[-1] * (1.0 / downscale_factor)),
                                       round(h.shape[-2] * (1.0 / downscale_factor)), downscale_method, "disabled")
            return h

        def grow_back(h, skip, transformer_options):
            if h.shape[2] != skip.shape[2]:  # meet the skip connection's size again
                h = common_upscale(h, skip.shape[-1], skip.shape[-2], upscale_method, "disabled")
            return h, skip

        m = model.clone()
        if downscale_after_skip:
            m.set_model_input_block_patch_after_skip(shrink)
        else:
            m.set_model_input_block_patch(shrink)
        m.set_model_output_block_patch(grow_back)
        return io.NodeOutput(m)


# -- HyperTile -----------------------------------------------------------------------------
def random_divisor(value: int, min_value: int, max_options: int = 1) -> int:
    """value // d for d one of the `max_options` smallest divisors of value that are >= min_value
    (picked with torch's global generator, as ComfyUI does)."""
    min_value = min(min_value, value)
    divisors = [d for d in range(min_value, value + 1) if value % d == 0]
    options = [value // d for d in divisors[:max_options]]
    index = torch.randint(low=0, high=len(options) - 1, size=(1,)).item() if len(options) > 1 else 0
    return options[index]


def hypertile_patches(tile_size: int, swap_size: int, max_depth: int, scale_depth: bool):
    """(attn1_patch, attn1_output_patch): self-attention queries of the first max_depth+1
    resolution levels are cut into about tile_size/8-latent-pixel tiles batched separately."""
    latent_tile = max(32, tile_size) // 8
    pending = None

    def tile_in(q, k, v, extra):
        nonlocal pending
        shape = extra["original_shape"]
        levels = [(shape[-2] / 2 ** i) * (shape[-1] / 2 ** i) for i in range(max_depth + 1)]
        tokens = q.shape[-2]
        if tokens in levels:
            aspect = shape[-1] / shape[-2]
            hw = q.shape[1]
            h, w = round(math.sqrt(hw * aspect)), round(math.sqrt(hw / aspect))
            factor = 2 ** levels.index(tokens) if scale_depth else 1
            nh = random_divisor(h, latent_tile * factor, swap_size)
            nw = random_divisor(w, latent_tile * factor, swap_size)
            if nh * nw > 1:
                b, _, c = q.shape
                q = (q.reshape(b, nh, h // nh, nw, w // nw, c).permute(0, 1, 3, 2, 4, 5)
                     .reshape(b * nh * nw, (h // nh) * (w // nw), c))
                pending = (nh, nw, h, w)
        return q, k, v

    def tile_out(out, extra):
        nonlocal pending
        if pending is not None:
            nh, nw, h, w = pending
            pending = None
            c = out.shape[-1]
            out = (out.reshape(-1, nh, nw, h // nh, w // nw, c).permute(0, 1, 3, 2, 4, 5)
                   .reshape(-1, h * w, c))
        return out
    return tile_in, tile_out


class HyperTile(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_hypertile"

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="HyperTile", category=UNET_CATEGORY, inputs=[
            io.Model.Input("model"),
            io.Int.Input("tile_size", default=256, min=1, max=2048),
            io.Int.Input("swap_size", default=2, min=1, max=128),
            io.Int.Input("max_depth", default=0, min=0, max=10),
            io.Boolean.Input("scale_depth", default=False)],
            outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, tile_size, swap_size, max_depth, scale_depth):
        tile_in, tile_out = hypertile_patches(tile_size, swap_size, max_depth, scale_depth)
        m = model.clone()
        m.set_model_attn1_patch(tile_in)
        m.set_model_attn1_output_patch(tile_out)
        return io.NodeOutput(m)


# -- attention multipliers -----------------------------------------------------------------
# A weight patch at strength_patch 0 still scales the weight by strength_model (ComfyUI's
# (None,) patch): the adapter itself is never evaluated.
_SCALE_ONLY = Adapter("diff", {"diff": torch.zeros(1)})


def scale_weights(target, keys, names: dict[str, float], key_for=lambda k: k) -> None:
    """target.add_patches scaling each weight/bias whose key ends with one of `names`
    (+ .weight / .bias) by that name's factor; factors of 1 are left out."""
    by_factor: dict[float, dict] = {}
    for key in keys:
        for suffix, factor in names.items():
            if factor != 1.0 and (key.endswith(suffix + ".weight") or key.endswith(suffix + ".bias")):
                by_factor.setdefault(factor, {})[key_for(key)] = _SCALE_ONLY
    for factor, patches in by_factor.items():
        target.add_patches(patches, 0.0, factor)


def multiply_unet_attention(model, attn: str, q, k, v, out):
    m = model.clone()
    names = {f"{attn}.to_q": q, f"{attn}.to_k": k, f"{attn}.to_v": v, f"{attn}.to_out.0": out}
    scale_weights(m, model.model_state_dict().keys(), names)
    return m


def _multiply_schema(node_id, target):
    return io.Schema(node_id=node_id, category=ATTENTION_EXPERIMENTS, is_experimental=True, inputs=[
        target,
        *(io.Float.Input(n, default=1.0, min=0.0, max=10.0, step=0.01) for n in ("q", "k", "v", "out"))],
        outputs=[io.Clip.Output() if isinstance(target, io.Clip.Input) else io.Model.Output()])


class UNetSelfAttentionMultiply(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_attention_multiply"

    @classmethod
    def define_schema(cls):
        return _multiply_schema("UNetSelfAttentionMultiply", io.Model.Input("model"))

    @classmethod
    def execute(cls, model, q, k, v, out):
        return io.NodeOutput(multiply_unet_attention(model, "attn1", q, k, v, out))


class UNetCrossAttentionMultiply(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_attention_multiply"

    @classmethod
    def define_schema(cls):
        return _multiply_schema("UNetCrossAttentionMultiply", io.Model.Input("model"))

    @classmethod
    def execute(cls, model, q, k, v, out):
        return io.NodeOutput(multiply_unet_attention(model, "attn2", q, k, v, out))


class CLIPAttentionMultiply(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_attention_multiply"

    @classmethod
    def define_schema(cls):
        return _multiply_schema("CLIPAttentionMultiply", io.Clip.Input("clip"))

    @classmethod
    def execute(cls, clip, q, k, v, out):
        c = clip.clone()
        names = {"self_attn.q_proj": q, "self_attn.k_proj": k, "self_attn.v_proj": v, "self_attn.out_proj": out}
        for encoder, sd in clip.state_dicts().items():
            scale_weights(c, sd.keys(), names, key_for=lambda key, e=encoder: (e, key))
        return io.NodeOutput(c)


V3_NODES = [FreeU, FreeU_V2, PatchModelAddDownscale, HyperTile, UNetSelfAttentionMultiply, UNetCrossAttentionMultiply,
            CLIPAttentionMultiply]
