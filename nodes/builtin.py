"""Registers every built-in node module. Each subject module exports NODE_CLASS_MAPPINGS
(and optionally NODE_DISPLAY_NAME_MAPPINGS); add new modules to BUILTIN_MODULES."""
from __future__ import annotations

import importlib
import logging

from nodes.registry import register

# (module, python_module reported in /object_info). A module exports NODE_CLASS_MAPPINGS (V1
# classes) and/or V3_NODES (V3 schema classes, registered under their schema ids).
BUILTIN_MODULES: list[tuple[str, str]] = [
    ("nodes.sampling", "nodes"),
    ("nodes.latent", "nodes"),
    ("nodes.latent_io", "nodes"),
    ("nodes.conditioning", "nodes"),
    ("nodes.controlnet", "nodes"),
    ("nodes.controlnet_extras", "comfy_extras.nodes_controlnet"),
    ("nodes.image_io", "nodes"),
    ("nodes.image", "nodes"),
    ("nodes.batch", "comfy_extras.nodes_rebatch"),
    ("nodes.mask", "comfy_extras.nodes_mask"),
    ("nodes.compositing", "comfy_extras.nodes_compositing"),
    ("nodes.image_transform", "comfy_extras.nodes_images"),
    ("nodes.postprocessing", "comfy_extras.nodes_post_processing"),
    ("nodes.image_savers", "comfy_extras.nodes_images"),
    ("nodes.sampling_schedulers", "comfy_extras.nodes_custom_sampler"),
    ("nodes.sampling_custom", "comfy_extras.nodes_custom_sampler"),
    ("nodes.sampling_extras", "comfy_extras.nodes_custom_sampler"),
    ("nodes.sampling_gits", "comfy_extras.nodes_gits"),
    ("nodes.sampling_advanced", "comfy_extras.nodes_advanced_samplers"),
    ("nodes.conditioning_models", "comfy_extras.nodes_ip2p"),  # classes name their own modules
    ("nodes.model_advanced", "comfy_extras.nodes_model_advanced"),
    ("nodes.vae", "nodes"),
    ("nodes.model_loaders", "nodes"),
    ("nodes.checkpoint_loaders", "nodes"),
    ("nodes.text_encode", "nodes"),
    ("nodes.text_encode_sdxl", "comfy_extras.nodes_clip_sdxl"),
    ("nodes.lora", "nodes"),
    ("nodes.primitives", "comfy_extras.nodes_primitive"),  # classes name their own modules
    ("nodes.unet_patches", "comfy_extras.nodes_freelunch"),  # classes name their own modules
    ("nodes.guidance_patches", "comfy_extras.nodes_sag"),  # classes name their own modules
    ("nodes.model_merging", "comfy_extras.nodes_model_merging"),
    ("nodes.model_merging_blocks", "comfy_extras.nodes_model_merging_model_specific"),
    ("nodes.latent_ops", "comfy_extras.nodes_latent"),
    ("nodes.clip_vision", "nodes"),
    ("nodes.inpaint", "nodes"),
    ("nodes.upscale", "comfy_extras.nodes_upscale_model"),
    ("nodes.canny", "comfy_extras.nodes_canny"),
    ("nodes.morphology", "comfy_extras.nodes_morphology"),
    ("nodes.preprocessors", "custom_nodes.comfyui_controlnet_aux"),  # the aux pack's nodes, built in
]


def register_all() -> None:
    for mod_name, reported in BUILTIN_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except Exception:
            logging.exception("built-in node module %s failed to import", mod_name)
            continue
        if hasattr(mod, "NODE_CLASS_MAPPINGS"):
            register(mod.NODE_CLASS_MAPPINGS, getattr(mod, "NODE_DISPLAY_NAME_MAPPINGS", None), reported)
        if hasattr(mod, "V3_NODES"):
            from nodes.v3 import register_v3
            register_v3(mod.V3_NODES, reported, register)
