"""CLIP vision, unCLIP and style-model nodes (V1, in ComfyUI 0.8.0's nodes.py):
CLIPVisionLoader, CLIPVisionEncode, unCLIPConditioning, StyleModelLoader, StyleModelApply and
unCLIPCheckpointLoader.

CLIPVisionEncode and workflows from before its `crop` input: ComfyUI 0.8.0 declares `crop`
required, so the seed workflow's CLIPVisionEncode nodes (exported by an older ComfyUI that
always centre-cropped) would fail validation with required_input_missing. comfyd declares
`crop` as an optional input defaulting to "center" (what those old versions did), so a
prompt without it validates and runs as it did when it was written, while /object_info still
describes the node exactly as ComfyUI does (crop required: the node supplies its own V1
description). No executor change is needed, and any prompt ComfyUI accepts is treated the same.
"""
from __future__ import annotations

import torch

from models import folders, placement
from models.clip_vision import UNCLIP_PREFIX, UnknownVisionModelError, has_vision_tower, load_clip_vision
from models.state_dict import ModelFileError, open_state_dict
from models.style_model import load_style_model
from nodes.conditioning import set_values

CROP_CHOICES = ["center", "none"]


class CLIPVisionLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_name": (folders.get_filename_list("clip_vision"),)}}

    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load_clip"
    CATEGORY = "loaders"

    def load_clip(self, clip_name):
        path = folders.get_full_path_or_raise("clip_vision", clip_name)
        try:
            return (placement.place_clip_vision(load_clip_vision(path)),)
        except ModelFileError as e:
            raise RuntimeError(f"ERROR: clip vision file is invalid and does not contain a valid vision model: "
                               f"{e}") from e


class CLIPVisionEncode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_vision": ("CLIP_VISION",), "image": ("IMAGE",)},
                "optional": {"crop": (CROP_CHOICES, {"default": "center"})}}

    RETURN_TYPES = ("CLIP_VISION_OUTPUT",)
    FUNCTION = "encode"
    CATEGORY = "conditioning"

    @classmethod
    def GET_NODE_INFO_V1(cls):
        """ComfyUI's description (crop required, no options), not the lenient declaration above."""
        from nodes.registry import NODE_DISPLAY_NAME_MAPPINGS
        inputs = {"required": {"clip_vision": ("CLIP_VISION",), "image": ("IMAGE",), "crop": (CROP_CHOICES,)}}
        return {
            "input": inputs,
            "input_order": {cat: list(spec) for cat, spec in inputs.items()},
            "output": cls.RETURN_TYPES,
            "output_is_list": [False],
            "output_name": cls.RETURN_TYPES,
            "name": "CLIPVisionEncode",
            "display_name": NODE_DISPLAY_NAME_MAPPINGS.get("CLIPVisionEncode", "CLIPVisionEncode"),
            "description": "",
            "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
            "category": cls.CATEGORY,
            "output_node": False,
        }

    def encode(self, clip_vision, image, crop="center"):
        return (clip_vision.encode_image(image, crop=crop == "center"),)


class unCLIPConditioning:  # noqa: N801 (ComfyUI's class name)
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",),
                             "clip_vision_output": ("CLIP_VISION_OUTPUT",),
                             "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
                             "noise_augmentation": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "apply_adm"
    CATEGORY = "conditioning"

    def apply_adm(self, conditioning, clip_vision_output, strength, noise_augmentation):
        if strength == 0:
            return (conditioning,)
        entry = {"clip_vision_output": clip_vision_output, "strength": strength,
                 "noise_augmentation": noise_augmentation}
        return (set_values(conditioning, {"unclip_conditioning": [entry]}, append=True),)


class StyleModelLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"style_model_name": (folders.get_filename_list("style_models"),)}}

    RETURN_TYPES = ("STYLE_MODEL",)
    FUNCTION = "load_style_model"
    CATEGORY = "loaders"

    def load_style_model(self, style_model_name):
        path = folders.get_full_path_or_raise("style_models", style_model_name)
        try:
            return (load_style_model(path),)
        except ModelFileError as e:
            raise RuntimeError(f"invalid style model {style_model_name}: {e}") from e


def _extend_attention_mask(keys: dict, txt: torch.Tensor, n: int, bias: torch.Tensor) -> None:
    """Make room for n new tokens after the text in the cond's attention mask (an additive
    bias over [text | reference image] tokens), the new columns getting `bias`."""
    ref_shape = keys.get("attention_mask_img_shape", (1, 1))
    n_ref = ref_shape[0] * ref_shape[1]
    n_txt = txt.shape[1]
    mask = keys.get("attention_mask")
    if mask is None:
        mask = torch.zeros((txt.shape[0], n_txt + n_ref, n_txt + n_ref), dtype=torch.float16)
    if mask.dtype == torch.bool:
        mask = torch.log(mask.to(dtype=torch.float16))  # True -> 0, False -> -inf
    size = n_txt + n + n_ref
    new = torch.zeros((txt.shape[0], size, size), dtype=torch.float16)
    new[:, :n_txt, :n_txt] = mask[:, :n_txt, :n_txt]
    new[:, :n_txt, n_txt + n:] = mask[:, :n_txt, n_txt:]
    new[:, n_txt + n:, :n_txt] = mask[:, n_txt:, :n_txt]
    new[:, n_txt + n:, n_txt + n:] = mask[:, n_txt:, n_txt:]
    new[:, :n_txt, n_txt:n_txt + n] = bias
    new[:, n_txt + n:, n_txt:n_txt + n] = bias
    keys["attention_mask"] = new.to(txt.device)
    keys["attention_mask_img_shape"] = ref_shape


class StyleModelApply:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",),
                             "style_model": ("STYLE_MODEL",),
                             "clip_vision_output": ("CLIP_VISION_OUTPUT",),
                             "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.001}),
                             "strength_type": (["multiply", "attn_bias"],)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "apply_stylemodel"
    CATEGORY = "conditioning/style_model"

    def apply_stylemodel(self, conditioning, style_model, clip_vision_output, strength, strength_type):
        tokens = style_model.get_cond(clip_vision_output).flatten(start_dim=0, end_dim=1).unsqueeze(dim=0)
        if strength_type == "multiply":
            tokens = tokens * strength
        n = tokens.shape[1]
        out = []
        for txt, keys in conditioning:
            keys = keys.copy()
            # an existing mask always needs the new columns, even at strength 1
            if "attention_mask" in keys or (strength_type == "attn_bias" and strength != 1.0):
                bias = torch.log(torch.Tensor([strength if strength_type == "attn_bias" else 1.0]))
                _extend_attention_mask(keys, txt, n, bias)
            if tokens.shape[-1] != txt.shape[-1]:
                raise ValueError(f"the style model makes {tokens.shape[-1]}-wide tokens but the conditioning is "
                                 f"{txt.shape[-1]} wide (a style model for another text encoder)")
            out.append([torch.cat((txt, tokens.to(txt.device, txt.dtype)), dim=1), keys])
        return (out,)


def clip_vision_of_checkpoint(path: str):
    """The CLIP vision tower inside a checkpoint (SD2.1-unCLIP: `embedder.model.visual.`), or None."""
    with open_state_dict(path) as src:
        if not has_vision_tower(src, UNCLIP_PREFIX):
            return None
        try:
            return placement.place_clip_vision(load_clip_vision(src, prefix=UNCLIP_PREFIX))
        except UnknownVisionModelError as e:
            raise RuntimeError(f"the checkpoint's CLIP vision model is invalid: {e}") from e


class unCLIPCheckpointLoader:  # noqa: N801 (ComfyUI's class name)
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (folders.get_filename_list("checkpoints"),)}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE", "CLIP_VISION")
    FUNCTION = "load_checkpoint"
    CATEGORY = "loaders"

    def load_checkpoint(self, ckpt_name, output_vae=True, output_clip=True):
        from nodes.checkpoint_loaders import load_checkpoint_parts
        path = folders.get_full_path_or_raise("checkpoints", ckpt_name)
        model, clip, vae = load_checkpoint_parts(path)
        return model, clip, vae, clip_vision_of_checkpoint(path)


NODE_CLASS_MAPPINGS = {
    "CLIPVisionLoader": CLIPVisionLoader,
    "CLIPVisionEncode": CLIPVisionEncode,
    "unCLIPConditioning": unCLIPConditioning,
    "StyleModelLoader": StyleModelLoader,
    "StyleModelApply": StyleModelApply,
    "unCLIPCheckpointLoader": unCLIPCheckpointLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "CLIPVisionLoader": "Load CLIP Vision",
    "CLIPVisionEncode": "CLIP Vision Encode",
    "StyleModelLoader": "Load Style Model",
    "StyleModelApply": "Apply Style Model",
}
