"""Model merging and saving (ComfyUI's comfy_extras.nodes_model_merging, V1 nodes there too).

Merges are weight patches on a clone of the first model (models/merge.py): per weight,
`w1 * strength_model + strength_patch * w2`, applied in place when the model samples and
restored when a later prompt wants other weights. The save nodes write the patched weights
(merges and LoRAs baked in) in the public file layouts, numbered like saved images, with the
prompt and workflow as safetensors metadata unless --disable-metadata.
"""
from __future__ import annotations

import json
import os

import safetensors.torch
import torch

from models import folders
from models.checkpoint import checkpoint_state_dict
from models.detect import SDXL_LIKE
from nodes.image_save import get_save_image_path
from nodes.settings import settings

RATIO = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})
MULTIPLIER = ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01})
CLIP_SKIPPED = (".position_ids", ".logit_scale")  # never merged (ComfyUI's rule)


def merge_into(first, second_patches: dict, strength_patch: float, strength_model: float, skip=()):
    """A clone of `first` (MODEL or CLIP) with `second_patches` added at the given strengths."""
    m = first.clone()
    m.add_patches({k: v for k, v in second_patches.items() if not (skip and k.endswith(skip))},
                  strength_patch, strength_model)
    return m


class ModelMergeSimple:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model1": ("MODEL",), "model2": ("MODEL",), "ratio": RATIO}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "merge"
    CATEGORY = "advanced/model_merging"

    def merge(self, model1, model2, ratio):
        # ratio 1.0 keeps model1, 0.0 gives model2
        return (merge_into(model1, model2.get_key_patches("diffusion_model."), 1.0 - ratio, ratio),)


class ModelSubtract:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model1": ("MODEL",), "model2": ("MODEL",), "multiplier": MULTIPLIER}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "merge"
    CATEGORY = "advanced/model_merging"

    def merge(self, model1, model2, multiplier):
        # multiplier * (model1 - model2)
        return (merge_into(model1, model2.get_key_patches("diffusion_model."), -multiplier, multiplier),)


class ModelAdd:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model1": ("MODEL",), "model2": ("MODEL",)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "merge"
    CATEGORY = "advanced/model_merging"

    def merge(self, model1, model2):
        return (merge_into(model1, model2.get_key_patches("diffusion_model."), 1.0, 1.0),)


class CLIPMergeSimple:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip1": ("CLIP",), "clip2": ("CLIP",), "ratio": RATIO}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "merge"
    CATEGORY = "advanced/model_merging"

    def merge(self, clip1, clip2, ratio):
        return (merge_into(clip1, clip2.get_key_patches(), 1.0 - ratio, ratio, CLIP_SKIPPED),)


class CLIPSubtract:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip1": ("CLIP",), "clip2": ("CLIP",), "multiplier": MULTIPLIER}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "merge"
    CATEGORY = "advanced/model_merging"

    def merge(self, clip1, clip2, multiplier):
        return (merge_into(clip1, clip2.get_key_patches(), -multiplier, multiplier, CLIP_SKIPPED),)


class CLIPAdd:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip1": ("CLIP",), "clip2": ("CLIP",)}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "merge"
    CATEGORY = "advanced/model_merging"

    def merge(self, clip1, clip2):
        return (merge_into(clip1, clip2.get_key_patches(), 1.0, 1.0, CLIP_SKIPPED),)


def block_ratio(unet_key: str, ratios: dict, default: float) -> float:
    """The ratio of the longest block prefix that starts `unet_key` (the first ratio otherwise).
    Plain prefixes, as ComfyUI: "out" also covers "output_blocks." in ModelMergeBlocks."""
    best, best_len = default, 0
    for prefix, ratio in ratios.items():
        if unet_key.startswith(prefix) and len(prefix) > best_len:
            best, best_len = ratio, len(prefix)
    return best


class ModelMergeBlocks:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model1": ("MODEL",), "model2": ("MODEL",), "input": RATIO, "middle": RATIO, "out": RATIO}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "merge"
    CATEGORY = "advanced/model_merging"

    def merge(self, model1, model2, **ratios):
        m = model1.clone()
        default = next(iter(ratios.values()))
        by_ratio: dict[float, dict] = {}  # one patch entry per distinct ratio
        for key, patch in model2.get_key_patches("diffusion_model.").items():
            ratio = block_ratio(key[len("diffusion_model."):], ratios, default)
            by_ratio.setdefault(ratio, {})[key] = patch
        for ratio, patches in by_ratio.items():
            m.add_patches(patches, 1.0 - ratio, ratio)
        return (m,)


# -- saving ------------------------------------------------------------------------------------

def file_metadata(prompt, extra_pnginfo) -> dict:
    """prompt and each EXTRA_PNGINFO entry as JSON strings, empty with --disable-metadata."""
    if settings["disable_metadata"]:
        return {}
    out = {"prompt": json.dumps(prompt) if prompt is not None else ""}
    for key, value in (extra_pnginfo or {}).items():
        out[key] = json.dumps(value)
    return out


def model_spec(model, stem: str, counter: int) -> tuple[dict, dict]:
    """(modelspec metadata, extra tensors) for a MODEL, as ComfyUI's save_checkpoint writes them."""
    det = model.model.detection
    meta: dict = {}
    arch = None
    if det.family in SDXL_LIKE:
        arch = "stable-diffusion-xl-v1-edit" if det.variant == "instructpix2pix" else "stable-diffusion-xl-v1-base"
    elif det.family == "sdxl_refiner":
        arch = "stable-diffusion-xl-v1-refiner"
    if arch is not None:
        meta.update({"modelspec.architecture": arch, "modelspec.sai_model_spec": "1.0.0",
                     "modelspec.implementation": "sgm", "modelspec.title": f"{stem} {counter}"})
    extra = {}
    if det.model_type == "eps":
        meta["modelspec.predict_key"] = "epsilon"
    elif det.model_type == "v_prediction":
        meta["modelspec.predict_key"] = "v"
        extra["v_pred"] = torch.tensor([])
        if getattr(model.get_model_object("model_sampling"), "zsnr", False):
            extra["ztsnr"] = torch.tensor([])
    return meta, extra


def save_tensors(sd: dict, path: str, metadata: dict) -> None:
    sd = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    safetensors.torch.save_file(sd, path, metadata=metadata or None)


def save_checkpoint(model, clip=None, vae=None, filename_prefix="checkpoints/ComfyUI", output_dir=None,
                    prompt=None, extra_pnginfo=None) -> str:
    """Write MODEL (+ CLIP, VAE) with their patches applied as one checkpoint; returns the path."""
    folder, stem, counter, _, _ = get_save_image_path(filename_prefix, output_dir or folders.state().output)
    spec, extra = model_spec(model, stem, counter)
    metadata = {**spec, **file_metadata(prompt, extra_pnginfo)}
    model.prepare_for_sampling()  # the shared weights become exactly this MODEL's (merges, LoRAs)
    text = clip.patched_state_dicts() if clip is not None else None
    sd = checkpoint_state_dict(model.model, text, vae)
    sd.update(extra)
    path = os.path.join(folder, f"{stem}_{counter:05}_.safetensors")
    save_tensors(sd, path, metadata)
    return path


class CheckpointSave:
    def __init__(self):
        self.output_dir = folders.state().output

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "clip": ("CLIP",), "vae": ("VAE",),
                             "filename_prefix": ("STRING", {"default": "checkpoints/ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "advanced/model_merging"

    def save(self, model, clip, vae, filename_prefix, prompt=None, extra_pnginfo=None):
        save_checkpoint(model, clip, vae, filename_prefix, self.output_dir, prompt, extra_pnginfo)
        return {}


class ModelSave:
    def __init__(self):
        self.output_dir = folders.state().output

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "filename_prefix": ("STRING", {"default": "diffusion_models/ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "advanced/model_merging"

    def save(self, model, filename_prefix, prompt=None, extra_pnginfo=None):
        save_checkpoint(model, None, None, filename_prefix, self.output_dir, prompt, extra_pnginfo)
        return {}


class CLIPSave:
    def __init__(self):
        self.output_dir = folders.state().output

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip": ("CLIP",), "filename_prefix": ("STRING", {"default": "clip/ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "advanced/model_merging"

    def save(self, clip, filename_prefix, prompt=None, extra_pnginfo=None):
        # One file per text encoder, "<prefix>_clip_l_00001_.safetensors", in the HF layout
        # ComfyUI writes (its "format: pt" marker only when metadata is written).
        metadata = file_metadata(prompt, extra_pnginfo)
        if metadata:
            metadata = {"format": "pt", **metadata}
        for name, sd in clip.patched_state_dicts().items():
            folder, stem, counter, _, _ = get_save_image_path(f"{filename_prefix}_{name}", self.output_dir)
            save_tensors(sd, os.path.join(folder, f"{stem}_{counter:05}_.safetensors"), metadata)
        return {}


class VAESave:
    def __init__(self):
        self.output_dir = folders.state().output

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": ("VAE",), "filename_prefix": ("STRING", {"default": "vae/ComfyUI_vae"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "advanced/model_merging"

    def save(self, vae, filename_prefix, prompt=None, extra_pnginfo=None):
        folder, stem, counter, _, _ = get_save_image_path(filename_prefix, self.output_dir)
        save_tensors(vae.first_stage_model.state_dict(), os.path.join(folder, f"{stem}_{counter:05}_.safetensors"),
                     file_metadata(prompt, extra_pnginfo))
        return {}


NODE_CLASS_MAPPINGS = {
    "ModelMergeSimple": ModelMergeSimple,
    "ModelMergeBlocks": ModelMergeBlocks,
    "ModelMergeSubtract": ModelSubtract,
    "ModelMergeAdd": ModelAdd,
    "CheckpointSave": CheckpointSave,
    "CLIPMergeSimple": CLIPMergeSimple,
    "CLIPMergeSubtract": CLIPSubtract,
    "CLIPMergeAdd": CLIPAdd,
    "CLIPSave": CLIPSave,
    "VAESave": VAESave,
    "ModelSave": ModelSave,
}
NODE_DISPLAY_NAME_MAPPINGS = {"CheckpointSave": "Save Checkpoint"}
