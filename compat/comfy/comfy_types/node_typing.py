"""Type names and base classes that typed custom node packs use (`comfy.comfy_types`)."""
from __future__ import annotations

from abc import ABC
from enum import Enum
from typing import TypedDict


class StrEnum(str, Enum):
    def __str__(self) -> str:
        return self.value


class IO(StrEnum):
    """Socket types. ANY ("*") matches everything; comma lists match any member."""
    STRING = "STRING"
    IMAGE = "IMAGE"
    MASK = "MASK"
    LATENT = "LATENT"
    BOOLEAN = "BOOLEAN"
    INT = "INT"
    FLOAT = "FLOAT"
    COMBO = "COMBO"
    CONDITIONING = "CONDITIONING"
    SAMPLER = "SAMPLER"
    SIGMAS = "SIGMAS"
    GUIDER = "GUIDER"
    NOISE = "NOISE"
    CLIP = "CLIP"
    CONTROL_NET = "CONTROL_NET"
    VAE = "VAE"
    MODEL = "MODEL"
    LORA_MODEL = "LORA_MODEL"
    LOSS_MAP = "LOSS_MAP"
    CLIP_VISION = "CLIP_VISION"
    CLIP_VISION_OUTPUT = "CLIP_VISION_OUTPUT"
    STYLE_MODEL = "STYLE_MODEL"
    GLIGEN = "GLIGEN"
    UPSCALE_MODEL = "UPSCALE_MODEL"
    AUDIO = "AUDIO"
    WEBCAM = "WEBCAM"
    POINT = "POINT"
    FACE_ANALYSIS = "FACE_ANALYSIS"
    BBOX = "BBOX"
    SEGS = "SEGS"
    VIDEO = "VIDEO"
    ANY = "*"
    NUMBER = "FLOAT,INT"
    PRIMITIVE = "STRING,FLOAT,INT,BOOLEAN"

    def __ne__(self, value: object) -> bool:
        # "*" matches anything; comma lists match when one is a subset of the other
        if self == "*" or value == "*":
            return False
        if not isinstance(value, str):
            return True
        a, b = frozenset(self.split(",")), frozenset(value.split(","))
        return not (b.issubset(a) or a.issubset(b))

    __hash__ = str.__hash__


InputTypeDict = dict
InputTypeOptions = dict


class FileLocator(TypedDict):
    filename: str
    subfolder: str
    type: str


class ComfyNodeABC(ABC):
    DESCRIPTION: str
    CATEGORY: str
    EXPERIMENTAL: bool
    DEPRECATED: bool

    @classmethod
    def INPUT_TYPES(cls) -> InputTypeDict:
        return {}


class CheckLazyMixin:
    def check_lazy_status(self, **kwargs) -> list[str]:
        """Request every lazy input that is still None."""
        return [k for k, v in kwargs.items() if v is None]
