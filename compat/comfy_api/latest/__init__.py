"""`comfy_api.latest`: the V3 node schema (io), UI outputs (ui), ComfyExtension and the
ComfyAPI object (progress from inside a node)."""
import torch

from comfy_api.latest import io, ui  # noqa: F401
from comfy_api.latest.io import ComfyExtension  # noqa: F401
from comfy_api.v0_0_2 import ComfyAPI, ComfyAPISync  # noqa: F401

ComfyAPI_latest = ComfyAPI
IO, UI = io, ui


class Input:
    """Type names for annotations: IMAGE/MASK are tensors, LATENT and AUDIO are dicts."""
    Image = torch.Tensor
    Mask = torch.Tensor
    Latent = dict
    Audio = dict
