"""MODEL: a shared DiffusionModel plus the patches one branch of a workflow asked for.

Nodes never change the model itself; they clone() the patcher and add to the clone: object
patches (a replacement model_sampling, ...), sampler hooks in model_options (CFG functions,
UNet wrappers) and weight patches (LoRA). Weight patches are applied in place right before
sampling and reverted when another combination is needed, so switching LoRAs never reloads
the checkpoint (models/lora/patcher.py keeps the originals).
"""
from __future__ import annotations

import copy
import inspect

import torch

from models.lora.patcher import WeightPatcher


def _clone_options(options: dict) -> dict:
    out = dict(options)
    for key in ("sampler_post_cfg_function", "sampler_pre_cfg_function"):
        if key in out:
            out[key] = list(out[key])
    if "transformer_options" in out:
        out["transformer_options"] = copy.deepcopy(out["transformer_options"])
    return out


def set_model_options_patch_replace(model_options: dict, patch, name: str, block_name: str, number: int,
                                    transformer_index=None) -> dict:
    """Put an attention replacement into model_options (copying the nested dicts it changes,
    so other holders of the same options are unaffected); returns model_options."""
    to = dict(model_options.get("transformer_options", {}))
    replace = dict(to.get("patches_replace", {}))
    table = dict(replace.get(name, {}))
    block = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
    table[block] = patch
    replace[name] = table
    to["patches_replace"] = replace
    model_options["transformer_options"] = to
    return model_options


class _PatchedView:
    """The model as one patcher sees it: attribute overrides on top of the shared model."""

    def __init__(self, model, overrides: dict):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_overrides", overrides)

    def __getattr__(self, name):
        overrides = object.__getattribute__(self, "_overrides")
        if name in overrides:
            return overrides[name]
        model = object.__getattribute__(self, "_model")
        method = getattr(type(model), name, None)
        if inspect.isfunction(method):  # methods run against the view, so they see the overrides
            return method.__get__(self, type(model))
        return getattr(model, name)


def _unet_target(key: str):
    return ("unet", key[len("diffusion_model."):] if key.startswith("diffusion_model.") else key)


class ModelPatcher:
    def __init__(self, model, load_device=None, offload_device=None, weight_patcher: WeightPatcher | None = None):
        self.model = model
        self.load_device = torch.device("cpu") if load_device is None else load_device
        self.offload_device = torch.device("cpu") if offload_device is None else offload_device
        self.model_options: dict = {"transformer_options": {}}
        self.object_patches: dict = {}
        self.weight_patches: list = []  # [(patches dict, strength_patch, strength_model)]
        # One weight patcher per shared model, so every clone restores the same originals.
        self.weights = weight_patcher or WeightPatcher({"unet": model.diffusion_model},
                                                       {"unet": getattr(model, "compute_dtype", None)})

    def clone(self) -> "ModelPatcher":
        c = ModelPatcher(self.model, self.load_device, self.offload_device, self.weights)
        c.model_options = _clone_options(self.model_options)
        c.object_patches = dict(self.object_patches)
        c.weight_patches = list(self.weight_patches)
        return c

    def is_clone(self, other) -> bool:
        return getattr(other, "model", None) is self.model

    # -- object patches -----------------------------------------------------------------
    def add_object_patch(self, name: str, obj) -> None:
        self.object_patches[name] = obj

    def get_model_object(self, name: str):
        if name in self.object_patches:
            return self.object_patches[name]
        return getattr(self.model, name)

    def sampling_model(self):
        """What the sampler calls: the shared model with this patcher's object patches."""
        return _PatchedView(self.model, self.object_patches) if self.object_patches else self.model

    # -- sampler hooks custom nodes use --------------------------------------------------
    def set_model_sampler_cfg_function(self, fn, disable_cfg1_optimization: bool = False) -> None:
        self.model_options["sampler_cfg_function"] = fn
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def set_model_sampler_post_cfg_function(self, fn, disable_cfg1_optimization: bool = False) -> None:
        self.model_options.setdefault("sampler_post_cfg_function", []).append(fn)
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def set_model_sampler_pre_cfg_function(self, fn, disable_cfg1_optimization: bool = False) -> None:
        self.model_options.setdefault("sampler_pre_cfg_function", []).append(fn)
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def set_model_unet_function_wrapper(self, fn) -> None:
        self.model_options["model_function_wrapper"] = fn

    def set_model_denoise_mask_function(self, fn) -> None:
        self.model_options["denoise_mask_function"] = fn

    def set_model_patch(self, patch, name: str) -> None:
        patches = self.model_options["transformer_options"].setdefault("patches", {})
        patches.setdefault(name, []).append(patch)

    def set_model_attn1_patch(self, patch):
        self.set_model_patch(patch, "attn1_patch")

    def set_model_attn2_patch(self, patch):
        self.set_model_patch(patch, "attn2_patch")

    def set_model_attn1_output_patch(self, patch):
        self.set_model_patch(patch, "attn1_output_patch")

    def set_model_attn2_output_patch(self, patch):
        self.set_model_patch(patch, "attn2_output_patch")

    def set_model_input_block_patch(self, patch):
        self.set_model_patch(patch, "input_block_patch")

    def set_model_input_block_patch_after_skip(self, patch):
        self.set_model_patch(patch, "input_block_patch_after_skip")

    def set_model_output_block_patch(self, patch):
        self.set_model_patch(patch, "output_block_patch")

    def set_model_patch_replace(self, patch, name: str, block_name: str, number: int, transformer_index=None):
        """Replace attention `name` ("attn1"/"attn2") in block (block_name, number[, transformer_index])."""
        set_model_options_patch_replace(self.model_options, patch, name, block_name, number, transformer_index)

    def set_model_attn1_replace(self, patch, block_name, number, transformer_index=None):
        self.set_model_patch_replace(patch, "attn1", block_name, number, transformer_index)

    def set_model_attn2_replace(self, patch, block_name, number, transformer_index=None):
        self.set_model_patch_replace(patch, "attn2", block_name, number, transformer_index)

    # -- weights (LoRA) ------------------------------------------------------------------
    def add_patches(self, patches: dict, strength_patch: float = 1.0, strength_model: float = 1.0) -> list:
        """patches: {("unet", key) | "diffusion_model.<key>" | "<key>": Adapter or a ComfyUI patch
        value}; per weight, w * strength_model + the adapter at strength_patch. Returns the keys
        (as given) that name a UNet weight."""
        from models.merge import normalise_patches
        found = normalise_patches(patches, self.weights, _unet_target)
        self.weight_patches.append(({t: a for t, a in found.values()}, strength_patch, strength_model))
        return list(found)

    def get_key_patches(self, filter_prefix: str | None = None) -> dict:
        """{"diffusion_model.<key>": this model's weight with its patches} for merging into
        another model's add_patches (read when that model is patched, nothing copied now)."""
        from models.merge import key_patches
        kp = key_patches(self.weights, self.weight_patches, "unet", "diffusion_model.")
        return {k: v for k, v in kp.items() if filter_prefix is None or k.startswith(filter_prefix)}

    def model_state_dict(self, filter_prefix=None) -> dict:
        sd = self.model.diffusion_model.state_dict()
        return {k: v for k, v in sd.items() if filter_prefix is None or k.startswith(filter_prefix)}

    def model_dtype(self) -> torch.dtype:
        return self.model.dtype()

    def model_size(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def prepare_for_sampling(self, conds=None) -> None:
        """Bring the shared weights to exactly this patcher's LoRA set (no-op when unchanged)."""
        self.weights.apply(self.weight_patches)
