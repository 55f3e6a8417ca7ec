"""Nodes that combine and annotate CONDITIONING ([[tensor, options], ...]) without a model:
combine, average, concat, areas, masks, strength, timestep ranges, zero-out."""
from __future__ import annotations

import logging

import torch

from nodes.constants import MAX_RESOLUTION

log = logging.getLogger(__name__)


def set_values(conditioning, values: dict, append: bool = False):
    """A copy of the conditioning with `values` set (or appended to) in every entry's options."""
    out = []
    for tensor, options in conditioning:
        options = options.copy()
        for k, v in values.items():
            if append and options.get(k) is not None:
                v = options[k] + v
            options[k] = v
        out.append([tensor, options])
    return out


def _strength(default=1.0):
    return ("FLOAT", {"default": default, "min": 0.0, "max": 10.0, "step": 0.01})


class ConditioningCombine:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning_1": ("CONDITIONING",), "conditioning_2": ("CONDITIONING",)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "combine"
    CATEGORY = "conditioning"

    def combine(self, conditioning_1, conditioning_2):
        return (conditioning_1 + conditioning_2,)


class ConditioningAverage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning_to": ("CONDITIONING",), "conditioning_from": ("CONDITIONING",),
                             "conditioning_to_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0,
                                                                    "step": 0.01})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "addWeighted"
    CATEGORY = "conditioning"

    def addWeighted(self, conditioning_to, conditioning_from, conditioning_to_strength):
        if len(conditioning_from) > 1:
            log.warning("ConditioningAverage: only the first entry of conditioning_from is used")
        cond_from = conditioning_from[0][0]
        pooled_from = conditioning_from[0][1].get("pooled_output")
        w = conditioning_to_strength
        out = []
        for tensor, options in conditioning_to:
            pooled_to = options.get("pooled_output", pooled_from)
            src = cond_from[:, :tensor.shape[1]]
            if src.shape[1] < tensor.shape[1]:  # pad the shorter one with zero tokens
                src = torch.cat([src, torch.zeros((1, tensor.shape[1] - src.shape[1], tensor.shape[2]))], dim=1)
            mixed = tensor * w + src * (1.0 - w)
            options = options.copy()
            if pooled_from is not None and pooled_to is not None:
                options["pooled_output"] = pooled_to * w + pooled_from * (1.0 - w)
            elif pooled_from is not None:
                options["pooled_output"] = pooled_from
            out.append([mixed, options])
        return (out,)


class ConditioningConcat:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning_to": ("CONDITIONING",), "conditioning_from": ("CONDITIONING",)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "concat"
    CATEGORY = "conditioning"

    def concat(self, conditioning_to, conditioning_from):
        if len(conditioning_from) > 1:
            log.warning("ConditioningConcat: only the first entry of conditioning_from is used")
        cond_from = conditioning_from[0][0]
        return ([[torch.cat((t, cond_from), 1), o.copy()] for t, o in conditioning_to],)


class ConditioningSetArea:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",),
                             "width": ("INT", {"default": 64, "min": 64, "max": MAX_RESOLUTION, "step": 8}),
                             "height": ("INT", {"default": 64, "min": 64, "max": MAX_RESOLUTION, "step": 8}),
                             "x": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}),
                             "y": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}),
                             "strength": _strength()}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"
    CATEGORY = "conditioning"

    def append(self, conditioning, width, height, x, y, strength):
        # area in latent pixels: (height, width, y, x)
        return (set_values(conditioning, {"area": (height // 8, width // 8, y // 8, x // 8),
                                          "strength": strength, "set_area_to_bounds": False}),)


class ConditioningSetAreaPercentage:
    @classmethod
    def INPUT_TYPES(cls):
        frac = {"min": 0, "max": 1.0, "step": 0.01}
        return {"required": {"conditioning": ("CONDITIONING",),
                             "width": ("FLOAT", {"default": 1.0, **frac}), "height": ("FLOAT", {"default": 1.0, **frac}),
                             "x": ("FLOAT", {"default": 0, **frac}), "y": ("FLOAT", {"default": 0, **frac}),
                             "strength": _strength()}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"
    CATEGORY = "conditioning"

    def append(self, conditioning, width, height, x, y, strength):
        return (set_values(conditioning, {"area": ("percentage", height, width, y, x), "strength": strength,
                                          "set_area_to_bounds": False}),)


class ConditioningSetAreaStrength:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",), "strength": _strength()}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"
    CATEGORY = "conditioning"

    def append(self, conditioning, strength):
        return (set_values(conditioning, {"strength": strength}),)


class ConditioningSetMask:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",), "mask": ("MASK",), "strength": _strength(),
                             "set_cond_area": (["default", "mask bounds"],)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"
    CATEGORY = "conditioning"

    def append(self, conditioning, mask, set_cond_area, strength):
        if mask.ndim < 3:
            mask = mask.unsqueeze(0)
        return (set_values(conditioning, {"mask": mask, "set_area_to_bounds": set_cond_area != "default",
                                          "mask_strength": strength}),)


class ConditioningZeroOut:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "zero_out"
    CATEGORY = "advanced/conditioning"

    def zero_out(self, conditioning):
        out = []
        for tensor, options in conditioning:
            options = options.copy()
            for key in ("pooled_output", "conditioning_lyrics"):
                if options.get(key) is not None:
                    options[key] = torch.zeros_like(options[key])
            out.append([torch.zeros_like(tensor), options])
        return (out,)


class ConditioningSetTimestepRange:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",),
                             "start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
                             "end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "set_range"
    CATEGORY = "advanced/conditioning"

    def set_range(self, conditioning, start, end):
        return (set_values(conditioning, {"start_percent": start, "end_percent": end}),)


NODE_CLASS_MAPPINGS = {
    "ConditioningCombine": ConditioningCombine, "ConditioningAverage": ConditioningAverage,
    "ConditioningConcat": ConditioningConcat, "ConditioningSetArea": ConditioningSetArea,
    "ConditioningSetAreaPercentage": ConditioningSetAreaPercentage,
    "ConditioningSetAreaStrength": ConditioningSetAreaStrength, "ConditioningSetMask": ConditioningSetMask,
    "ConditioningZeroOut": ConditioningZeroOut, "ConditioningSetTimestepRange": ConditioningSetTimestepRange,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ConditioningCombine": "Conditioning (Combine)",
    "ConditioningAverage ": "Conditioning (Average)",  # ComfyUI's key has this trailing space, so it never applies
    "ConditioningConcat": "Conditioning (Concat)",
    "ConditioningSetArea": "Conditioning (Set Area)",
    "ConditioningSetAreaPercentage": "Conditioning (Set Area with Percentage)",
    "ConditioningSetMask": "Conditioning (Set Mask)",
}
