"""`comfy.clip_vision` for custom node packs (IPAdapter and friends): loading a CLIP vision
tower, ComfyUI's preprocessing and the output object, over models/clip_vision.py."""
from __future__ import annotations

from models.clip_vision import ClipVisionModel, Output, clip_preprocess, load_clip_vision  # noqa: F401


def load(ckpt_path):
    """A ClipVisionModel from a file (HF or OpenCLIP layout), as comfy.clip_vision.load."""
    return load_clip_vision(ckpt_path)


def load_clipvision_from_sd(sd, prefix="", convert_keys=False):
    """A ClipVisionModel from a state dict; `prefix` selects the tower inside a larger file.
    Key conversion (OpenCLIP -> HF) happens whenever the keys need it."""
    return load_clip_vision(sd, prefix=prefix or None)
