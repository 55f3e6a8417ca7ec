"""Loader nodes for diffusion models: UNETLoader ("Load Diffusion Model").

The architecture is read from the file's keys and shapes (models/detect.py); a file that
is not a supported UNet fails with an error naming what it holds.
"""
from __future__ import annotations

import torch

from models import devices, folders, placement
from models.checkpoint import load_diffusion_model

WEIGHT_DTYPES = {"default": None, "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_fast": torch.float8_e4m3fn,
                 "fp8_e5m2": torch.float8_e5m2}


class UNETLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"unet_name": (folders.get_filename_list("diffusion_models"),),
                             "weight_dtype": (list(WEIGHT_DTYPES),)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_unet"
    CATEGORY = "advanced/loaders"

    def load_unet(self, unet_name, weight_dtype):
        path = folders.get_full_path_or_raise("diffusion_models", unet_name)
        # fp8 weights stay fp8 in memory and are upcast layer by layer for the compute dtype
        from nodes.checkpoint_loaders import stored_weight_dtype
        stored = stored_weight_dtype(path, prefix="")
        weight, compute = devices.precision("unet", stored)
        weight = WEIGHT_DTYPES[weight_dtype] or weight
        model = load_diffusion_model(path, device=placement.file_device(path, weight), compute_dtype=compute,
                                     weight_dtype=weight)
        return (placement.place_unet(model),)


NODE_CLASS_MAPPINGS = {"UNETLoader": UNETLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"UNETLoader": "Load Diffusion Model"}
