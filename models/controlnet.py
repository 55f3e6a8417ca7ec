"""CONTROL_NET objects: ControlNets, Control-LoRAs and T2I-Adapters as the sampler uses them.

The sampler's contract (models/sampling/ksampler.py and guidance.py, ComfyUI's ControlBase):
`pre_run(model, percent_to_sigma)` once before sampling (start/end percent become a sigma
range; Control-LoRA builds its network on the base UNet here), `get_control(x, sigma, conds,
batched_number, transformer_options)` per model call -> {"input"/"middle"/"output": [residual
or None, ...]} or None, `cleanup()` after sampling. A control applied on top of another
(`previous_controlnet`) adds its residuals to the earlier one's, so chains of any length
reach the UNet as one dict. Nodes never change a control: they `copy()` it and give the copy
its hint image, strength and range (`set_cond_hint`).

The hint image [B,C,H,W] in 0..1 is resized once per latent size to latent * 8 pixels
(nearest-exact, centre crop to the aspect) and repeated to the batch; a ControlNet sees the
model's scaled input x * c_in, the nearest-integer timestep, the text context and (SDXL) the
ADM vector. Residuals are multiplied by the strength (after global average pooling for
`*_shuffle` files).
"""
from __future__ import annotations

import logging
import os

import torch

from models.controlnet_models import ControlNetModel, add_low_rank
from models.ops import load_into
from models.resize import common_upscale

UNBOUNDED_START = 999999999.9  # percent_to_sigma(0.0), the start of a range beginning at 0%

log = logging.getLogger(__name__)


def broadcast_hint(hint: torch.Tensor, batch_size: int, batched_number: int) -> torch.Tensor:
    """The hint repeated to a batch made of `batched_number` equal parts (cond, uncond...):
    each part gets the hint's first images, cycled when the hint has fewer."""
    if hint.shape[0] == 1:
        return hint
    per_part = batch_size // batched_number
    hint = hint[:per_part]
    if per_part > hint.shape[0]:
        reps = [hint] * (per_part // hint.shape[0]) + [hint[:per_part % hint.shape[0]]]
        hint = torch.cat(reps, dim=0)
    if hint.shape[0] == batch_size:
        return hint
    return torch.cat([hint] * batched_number, dim=0)


class ControlBase:
    def __init__(self):
        self.cond_hint_original: torch.Tensor | None = None
        self.cond_hint: torch.Tensor | None = None
        self.strength = 1.0
        self.timestep_percent_range = (0.0, 1.0)
        self.timestep_range: tuple | None = None
        self.latent_format = None  # set only for controls working in latent space (none here yet)
        self.vae = None
        self.global_average_pooling = False
        self.compression_ratio = 8
        self.upscale_algorithm = "nearest-exact"
        self.extra_args: dict = {}
        self.previous_controlnet: ControlBase | None = None
        self.extra_conds: list = []

    # -- what the nodes call -------------------------------------------------------------
    def set_cond_hint(self, cond_hint, strength=1.0, timestep_percent_range=(0.0, 1.0), vae=None, extra_concat=()):
        self.cond_hint_original = cond_hint
        self.strength = strength
        self.timestep_percent_range = timestep_percent_range
        if self.latent_format is not None:
            if vae is None:
                log.warning("no VAE given to the ControlNet apply node though this ControlNet needs one")
            self.vae = vae
        return self

    def set_previous_controlnet(self, controlnet):
        self.previous_controlnet = controlnet
        return self

    def set_extra_arg(self, argument, value=None):
        self.extra_args[argument] = value

    def copy_to(self, c: "ControlBase") -> None:
        c.cond_hint_original = self.cond_hint_original
        c.strength = self.strength
        c.timestep_percent_range = self.timestep_percent_range
        c.global_average_pooling = self.global_average_pooling
        c.compression_ratio = self.compression_ratio
        c.upscale_algorithm = self.upscale_algorithm
        c.latent_format = self.latent_format
        c.extra_args = self.extra_args.copy()
        c.vae = self.vae
        c.extra_conds = self.extra_conds.copy()

    # -- what the sampler calls ----------------------------------------------------------
    def pre_run(self, model, percent_to_timestep_function):
        start, end = self.timestep_percent_range
        self.timestep_range = (percent_to_timestep_function(start), percent_to_timestep_function(end))
        if self.previous_controlnet is not None:
            self.previous_controlnet.pre_run(model, percent_to_timestep_function)

    def cleanup(self):
        if self.previous_controlnet is not None:
            self.previous_controlnet.cleanup()
        self.cond_hint = None
        self.timestep_range = None

    def get_models(self) -> list:
        return self.previous_controlnet.get_models() if self.previous_controlnet is not None else []

    def inference_memory_requirements(self, dtype) -> int:
        if self.previous_controlnet is not None:
            return self.previous_controlnet.inference_memory_requirements(dtype)
        return 0

    def _previous_and_active(self, x_noisy, t, cond, batched_number, transformer_options):
        """(the chain's earlier residuals, whether this control is active at sigma t[0])."""
        prev = None
        if self.previous_controlnet is not None:
            prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        r = self.timestep_range
        # the full 0%..100% range needs no comparison (and so no device-to-host sync)
        active = r is None or (r[0] >= UNBOUNDED_START and r[1] <= 0.0) or not (t[0] > r[0] or t[0] < r[1])
        return prev, active

    def control_merge(self, control: dict, control_prev: dict | None, output_dtype=None) -> dict:
        """This control's residuals scaled by its strength, plus the chain's earlier ones."""
        out = {"input": [], "middle": [], "output": []}
        for key, residuals in control.items():
            for r in residuals:
                if r is not None:
                    if self.global_average_pooling:
                        r = torch.mean(r, dim=(2, 3), keepdim=True).repeat(1, 1, r.shape[2], r.shape[3])
                    r = r * self.strength
                    if output_dtype is not None and r.dtype != output_dtype:
                        r = r.to(output_dtype)
                out[key].append(r)
        if control_prev is not None:
            for key in ("input", "middle", "output"):
                o = out[key]
                for i, prev in enumerate(control_prev.get(key, [])):
                    if i >= len(o):
                        o.append(prev)
                    elif prev is not None:
                        o[i] = prev if o[i] is None else prev + o[i]
        return out

    def _resized_hint(self, x_noisy, width, height) -> torch.Tensor:
        return common_upscale(self.cond_hint_original, width, height, self.upscale_algorithm, "center")


class ControlNet(ControlBase):
    """A ControlNet network run on every model call inside its range."""

    def __init__(self, control_model: ControlNetModel | None = None, global_average_pooling=False,
                 compression_ratio=8, latent_format=None, compute_dtype=torch.float32, extra_conds=("y",)):
        super().__init__()
        self.control_model = control_model
        self.global_average_pooling = global_average_pooling
        self.compression_ratio = compression_ratio
        self.latent_format = latent_format
        self.compute_dtype = compute_dtype
        self.extra_conds += list(extra_conds)
        self.model_sampling_current = None

    def pre_run(self, model, percent_to_timestep_function):
        super().pre_run(model, percent_to_timestep_function)
        self.model_sampling_current = model.model_sampling

    def cleanup(self):
        self.model_sampling_current = None
        super().cleanup()

    def copy(self) -> "ControlNet":
        c = ControlNet(self.control_model, self.global_average_pooling, self.compression_ratio, self.latent_format,
                       self.compute_dtype, extra_conds=())
        self.copy_to(c)
        return c

    def _prepare_hint(self, x_noisy, batched_number, dtype):
        h, w = x_noisy.shape[2] * self.compression_ratio, x_noisy.shape[3] * self.compression_ratio
        if self.cond_hint is None or self.cond_hint.shape[2] != h or self.cond_hint.shape[3] != w:
            if self.latent_format is not None:
                raise ValueError("This ControlNet works in latent space and needs a VAE: use the Apply ControlNet "
                                 "node with its vae input connected")
            hint = self._resized_hint(x_noisy, w, h)
            self.cond_hint = hint.to(device=x_noisy.device, dtype=dtype)
        if x_noisy.shape[0] != self.cond_hint.shape[0]:
            self.cond_hint = broadcast_hint(self.cond_hint, x_noisy.shape[0], batched_number)

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options=None):
        prev, active = self._previous_and_active(x_noisy, t, cond, batched_number, transformer_options)
        if not active:
            return prev
        if self.model_sampling_current is None:
            raise RuntimeError("ControlNet used before pre_run() gave it the model's noise schedule")
        dtype = self.compute_dtype
        self._prepare_hint(x_noisy, batched_number, dtype)
        context = cond.get("crossattn_controlnet", cond.get("c_crossattn"))
        extra = dict(self.extra_args)
        for name in self.extra_conds:
            value = cond.get(name)
            if value is not None:
                extra[name] = value.to(x_noisy.device, dtype) if torch.is_tensor(value) else value
        ms = self.model_sampling_current
        timestep = ms.timestep(t)
        x = ms.calculate_input(t, x_noisy)
        context = context.to(x.device, dtype) if context is not None else None
        control = self.control_model(x=x.to(dtype), hint=self.cond_hint, timesteps=timestep.to(dtype),
                                     context=context, **extra)
        return self.control_merge(control, prev)


class ControlLora(ControlNet):
    """Stability's Control-LoRA: a ControlNet whose encoder is the base model's UNet encoder
    plus low-rank deltas, with its own hint block, zero convs and norms. The network is built
    on the base UNet at pre_run (sharing its weights, LoRA patches included) and dropped at
    cleanup."""

    def __init__(self, control_weights: dict, global_average_pooling=False):
        super().__init__(None, global_average_pooling)
        self.control_weights = control_weights

    def copy(self) -> "ControlLora":
        c = ControlLora(self.control_weights, self.global_average_pooling)
        self.copy_to(c)
        return c

    def pre_run(self, model, percent_to_timestep_function):
        super().pre_run(model, percent_to_timestep_function)
        unet = model.diffusion_model
        dtype = model.dtype()
        device = next(unet.parameters()).device
        hint_channels = self.control_weights["input_hint_block.0.weight"].shape[1]
        with torch.device("meta"):
            net = ControlNetModel(unet.config, hint_channels)
        own = net.state_dict().keys()
        base = unet.state_dict()
        sd = {}
        for k in own:
            if k in self.control_weights:
                sd[k] = self.control_weights[k].to(device=device, dtype=dtype)
            elif k in base:
                sd[k] = base[k]  # shared with the UNet, not copied
        try:
            load_into(net, sd, strict=True, what="Control-LoRA")
            for k, up in self.control_weights.items():
                if k.endswith(".up") and "__" not in k:
                    layer = net.get_submodule(k[:-len(".up")])
                    add_low_rank(layer, up.to(device=device, dtype=dtype),
                                 self.control_weights[k[:-len(".up")] + ".down"].to(device=device, dtype=dtype))
        except (ValueError, KeyError, AttributeError) as e:
            raise ValueError(f"this Control-LoRA does not fit the model it is applied to (it only works with "
                             f"the UNet architecture it was trained for, e.g. SDXL base): {e}") from e
        self.control_model = net.eval()
        self.compute_dtype = dtype

    def cleanup(self):
        self.control_model = None
        super().cleanup()

    def inference_memory_requirements(self, dtype) -> int:
        size = sum(t.numel() for t in self.control_weights.values()) * torch.empty((), dtype=dtype).element_size()
        return size + super().inference_memory_requirements(dtype)


class T2IAdapter(ControlBase):
    """A T2I-Adapter: its features depend on the hint only, so they are computed once per
    latent size and reused at every step."""

    def __init__(self, t2i_model, channels_in: int, compression_ratio=8, upscale_algorithm="nearest-exact"):
        super().__init__()
        self.t2i_model = t2i_model
        self.channels_in = channels_in
        self.compression_ratio = compression_ratio
        self.upscale_algorithm = upscale_algorithm
        self.control_input = None

    def copy(self) -> "T2IAdapter":
        c = T2IAdapter(self.t2i_model, self.channels_in, self.compression_ratio, self.upscale_algorithm)
        self.copy_to(c)
        return c

    def cleanup(self):
        self.control_input = None
        super().cleanup()

    def scale_image_to(self, width, height):
        n = self.t2i_model.unshuffle_amount
        return -(-width // n) * n, -(-height // n) * n

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options=None):
        prev, active = self._previous_and_active(x_noisy, t, cond, batched_number, transformer_options)
        if not active:
            return prev
        h, w = x_noisy.shape[2] * self.compression_ratio, x_noisy.shape[3] * self.compression_ratio
        if self.cond_hint is None or self.cond_hint.shape[2] != h or self.cond_hint.shape[3] != w:
            self.control_input = None
            width, height = self.scale_image_to(w, h)
            hint = self._resized_hint(x_noisy, width, height).float().to(x_noisy.device)
            if self.channels_in == 1 and hint.shape[1] > 1:
                hint = torch.mean(hint, 1, keepdim=True)
            self.cond_hint = hint
        if x_noisy.shape[0] != self.cond_hint.shape[0]:
            self.cond_hint = broadcast_hint(self.cond_hint, x_noisy.shape[0], batched_number)
        if self.control_input is None:
            self.control_input = self.t2i_model(self.cond_hint.to(x_noisy.dtype))
        features = {k: [None if f is None else f.clone() for f in v] for k, v in self.control_input.items()}
        return self.control_merge(features, prev, x_noisy.dtype)


def wants_global_average_pooling(path: str) -> bool:
    """ComfyUI's rule: shuffle ControlNets are recognised by their file name."""
    stem = os.path.splitext(path)[0]
    return stem.endswith("_shuffle") or stem.endswith("_shuffle_fp16")
