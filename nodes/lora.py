"""LoraLoader and LoraLoaderModelOnly: a LoRA file's tensors turned into weight patches on clones
of the MODEL and CLIP (models/lora). The checkpoint's weights are patched in place only when
a sampler or encoder runs, and restored for the next prompt that uses another set."""
from __future__ import annotations

import logging

from models import folders
from models.lora.keymap import clip_key_map, unet_key_map
from models.lora.load import lora_patches
from models.state_dict import load_state_dict

log = logging.getLogger(__name__)


def _unet_structure(model) -> dict:
    c = model.model.diffusion_model.config
    return {"num_res_blocks": list(c.num_res_blocks), "transformer_depth": list(c.transformer_depth),
            "transformer_depth_output": list(c.transformer_depth_output),
            "transformer_depth_middle": c.transformer_depth_middle}


def load_lora_for_models(model, clip, lora: dict, strength_model: float, strength_clip: float):
    """(patched MODEL clone or None, patched CLIP clone or None), as comfy.sd.load_lora_for_models."""
    key_map: dict = {}
    if model is not None:
        key_map.update(unet_key_map(model.model_state_dict().keys(), _unet_structure(model)))
    if clip is not None:
        key_map.update(clip_key_map({name: list(m.state_dict()) for name, m in clip.models.items()}))
    patches = lora_patches(lora, key_map)
    used: set = set()
    new_model = new_clip = None
    if model is not None:
        new_model = model.clone()
        used.update(new_model.add_patches(patches, strength_model))
    if clip is not None:
        new_clip = clip.clone()
        used.update(new_clip.add_patches(patches, strength_clip))
    for target in patches:
        if target not in used:
            log.warning("NOT LOADED %s", target)
    return new_model, new_clip


class LoraLoader:
    def __init__(self):
        self.loaded_lora = None  # (path, tensors): the same file is read once per node

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The diffusion model the LoRA will be applied to."}),
            "clip": ("CLIP", {"tooltip": "The CLIP model the LoRA will be applied to."}),
            "lora_name": (folders.get_filename_list("loras"), {"tooltip": "The name of the LoRA."}),
            "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01,
                                         "tooltip": "How strongly to modify the diffusion model. This value can be negative."}),
            "strength_clip": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01,
                                        "tooltip": "How strongly to modify the CLIP model. This value can be negative."})}}

    RETURN_TYPES = ("MODEL", "CLIP")
    OUTPUT_TOOLTIPS = ("The modified diffusion model.", "The modified CLIP model.")
    FUNCTION = "load_lora"
    CATEGORY = "loaders"
    DESCRIPTION = ("LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are denoised "
                   "such as applying styles. Multiple LoRA nodes can be linked together.")

    def _tensors(self, lora_name: str) -> dict:
        path = folders.get_full_path_or_raise("loras", lora_name)
        if self.loaded_lora is None or self.loaded_lora[0] != path:
            self.loaded_lora = (path, load_state_dict(path))
        return self.loaded_lora[1]

    def load_lora(self, model, clip, lora_name, strength_model, strength_clip):
        if strength_model == 0 and strength_clip == 0:
            return (model, clip)
        return load_lora_for_models(model, clip, self._tensors(lora_name), strength_model, strength_clip)


class LoraLoaderModelOnly(LoraLoader):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "lora_name": (folders.get_filename_list("loras"),),
                             "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_lora_model_only"

    def load_lora_model_only(self, model, lora_name, strength_model):
        return (self.load_lora(model, None, lora_name, strength_model, 0)[0],)


NODE_CLASS_MAPPINGS = {"LoraLoader": LoraLoader, "LoraLoaderModelOnly": LoraLoaderModelOnly}
NODE_DISPLAY_NAME_MAPPINGS = {"LoraLoader": "Load LoRA"}
