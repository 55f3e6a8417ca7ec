"""SaveLatent and LoadLatent: latents as .latent (safetensors) files, ComfyUI's format
(`latent_tensor` plus a `latent_format_version_0` marker; older files were stored scaled)."""
from __future__ import annotations

import hashlib
import json
import os

import safetensors.torch
import torch

from models import folders
from nodes.image_save import get_save_image_path
from nodes.settings import settings

LEGACY_SCALE = 1.0 / 0.18215  # files without the version marker hold SD1-scaled latents


class SaveLatent:
    def __init__(self):
        self.output_dir = folders.state().output

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "filename_prefix": ("STRING", {"default": "latents/ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "_for_testing"

    def save(self, samples, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        folder, stem, counter, subfolder, _ = get_save_image_path(filename_prefix, self.output_dir)
        metadata = None
        if not settings["disable_metadata"]:
            metadata = {"prompt": json.dumps(prompt) if prompt is not None else ""}
            for key, value in (extra_pnginfo or {}).items():
                metadata[key] = json.dumps(value)
        name = f"{stem}_{counter:05}_.latent"
        tensors = {"latent_tensor": samples["samples"].contiguous(), "latent_format_version_0": torch.tensor([])}
        safetensors.torch.save_file(tensors, os.path.join(folder, name), metadata=metadata)
        return {"ui": {"latents": [{"filename": name, "subfolder": subfolder, "type": "output"}]}}


class LoadLatent:
    @classmethod
    def INPUT_TYPES(cls):
        root = folders.state().input
        files = sorted(f for f in os.listdir(root) if os.path.isfile(os.path.join(root, f)) and f.endswith(".latent")) \
            if os.path.isdir(root) else []
        return {"required": {"latent": [files]}}

    CATEGORY = "_for_testing"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "load"

    def load(self, latent):
        data = safetensors.torch.load_file(folders.get_annotated_filepath(latent), device="cpu")
        scale = 1.0 if "latent_format_version_0" in data else LEGACY_SCALE
        return ({"samples": data["latent_tensor"].float() * scale},)

    @classmethod
    def IS_CHANGED(cls, latent):
        h = hashlib.sha256()
        with open(folders.get_annotated_filepath(latent), "rb") as f:
            h.update(f.read())
        return h.digest().hex()

    @classmethod
    def VALIDATE_INPUTS(cls, latent):
        if not folders.exists_annotated_filepath(latent):
            return f"Invalid latent file: {latent}"
        return True


NODE_CLASS_MAPPINGS = {"SaveLatent": SaveLatent, "LoadLatent": LoadLatent}
