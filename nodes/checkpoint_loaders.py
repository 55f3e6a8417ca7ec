"""Checkpoint loader nodes: CheckpointLoaderSimple ("Load Checkpoint") and the deprecated
CheckpointLoader (with a config file, which comfyd does not need: the architecture is always
read from the file's keys and shapes).

A checkpoint gives a MODEL (ModelPatcher over the diffusion model), a CLIP built from its
text encoders with the embeddings folders for `embedding:` names, and its VAE."""
from __future__ import annotations

import torch

from models import devices, folders, placement
from models.checkpoint import load_checkpoint
from models.clip import build_clip
from models.state_dict import open_state_dict
from nodes.text_encode import embedding_library

# On the CPU half-precision weights are kept as stored: every layer computes in fp32 (models/ops.py),
# so the numbers equal those of fp32 weights at half the memory. On a GPU the UNet is held in its
# compute dtype (models/devices.py). Anything else is held in fp32.
LOSSLESS_STORAGE = (torch.float16, torch.bfloat16, torch.float32)


def stored_weight_dtype(path: str, prefix: str = "model.diffusion_model.") -> torch.dtype:
    with open_state_dict(path) as src:
        for key in src.keys():
            if key.startswith(prefix) and key.endswith(".weight"):
                dtype = src.get(key).dtype
                return dtype if dtype in LOSSLESS_STORAGE else torch.float32
    return torch.float32


def load_checkpoint_parts(path: str, output_clip: bool = True, output_vae: bool = True):
    """(MODEL, CLIP or None, VAE or None) of a checkpoint file, as ComfyUI's
    load_checkpoint_guess_config returns them."""
    stored = stored_weight_dtype(path)
    weight, compute = devices.precision("unet", stored)
    text_weight, _ = devices.precision("text_encoder", stored)
    # straight from the file onto the GPU when it fits (no second copy in RAM)
    loaded = load_checkpoint(path, device=placement.file_device(path, weight), compute_dtype=compute,
                             weight_dtype=weight, output_vae=output_vae, output_clip=output_clip,
                             text_dtype=text_weight)
    clip = None
    if output_clip:
        if loaded.text_encoders:
            clip = placement.place_clip(build_clip(loaded.text_encoders, embedding_library(),
                                                   weight_dtype=text_weight))
        # else: ComfyUI also returns None here; CLIPTextEncode then explains the missing encoder
    vae = placement.place_vae(loaded.vae, stored) if loaded.vae is not None else None
    return placement.place_unet(loaded.model), clip, vae


class CheckpointLoaderSimple:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (folders.get_filename_list("checkpoints"),
                                           {"tooltip": "The name of the checkpoint (model) to load."})}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = ("The model used for denoising latents.",
                       "The CLIP model used for encoding text prompts.",
                       "The VAE model used for encoding and decoding images to and from latent space.")
    FUNCTION = "load_checkpoint"
    CATEGORY = "loaders"
    DESCRIPTION = "Loads a diffusion model checkpoint, diffusion models are used to denoise latents."

    def load_checkpoint(self, ckpt_name):
        return load_checkpoint_parts(folders.get_full_path_or_raise("checkpoints", ckpt_name))


class CheckpointLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"config_name": (folders.get_filename_list("configs"),),
                             "ckpt_name": (folders.get_filename_list("checkpoints"),)}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load_checkpoint"
    CATEGORY = "advanced/loaders"
    DEPRECATED = True

    def load_checkpoint(self, config_name, ckpt_name):
        # The YAML config only restated the architecture, which detection reads from the weights.
        return load_checkpoint_parts(folders.get_full_path_or_raise("checkpoints", ckpt_name))


NODE_CLASS_MAPPINGS = {"CheckpointLoaderSimple": CheckpointLoaderSimple, "CheckpointLoader": CheckpointLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"CheckpointLoaderSimple": "Load Checkpoint",
                              "CheckpointLoader": "Load Checkpoint With Config (DEPRECATED)"}
