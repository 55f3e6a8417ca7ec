"""ComfyUI's `node_helpers` for custom node packs, over comfyd's node helpers."""
from __future__ import annotations

import hashlib

import torch

from nodes.conditioning import set_values
from nodes.image_io import pillow  # noqa: F401
from nodes.image_ops import image_alpha_fix  # noqa: F401


def conditioning_set_values(conditioning, values=None, append=False):
    return set_values(conditioning, values or {}, append)


def hasher():
    """The hash constructor chosen by --default-hashing-function."""
    from nodes.settings import settings
    return getattr(hashlib, settings["hashing_function"])


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def string_to_torch_dtype(string):
    return _DTYPES.get(string)
