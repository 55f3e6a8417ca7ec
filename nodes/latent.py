"""Latent nodes: empty latents, resizing, batching, compositing, transforms and the noise mask."""
from __future__ import annotations

import math

import torch

from models.resize import common_upscale
from nodes.constants import MAX_RESOLUTION

UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]


def _latent_only():
    return {"required": {"samples": ("LATENT",)}}


class EmptyLatentImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "width": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8,
                              "tooltip": "The width of the latent images in pixels."}),
            "height": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8,
                               "tooltip": "The height of the latent images in pixels."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096,
                                   "tooltip": "The number of latent images in the batch."}),
        }}

    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The empty latent image batch.",)
    FUNCTION = "generate"
    CATEGORY = "latent"
    DESCRIPTION = "Create a new batch of empty latent images to be denoised via sampling."

    def generate(self, width, height, batch_size=1):
        return ({"samples": torch.zeros([batch_size, 4, height // 8, width // 8])},)


class LatentFromBatch:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",),
                             "batch_index": ("INT", {"default": 0, "min": 0, "max": 63}),
                             "length": ("INT", {"default": 1, "min": 1, "max": 64})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "frombatch"
    CATEGORY = "latent/batch"

    def frombatch(self, samples, batch_index, length):
        s = samples.copy()
        src = samples["samples"]
        batch_index = min(src.shape[0] - 1, batch_index)
        length = min(src.shape[0] - batch_index, length)
        s["samples"] = src[batch_index:batch_index + length].clone()
        if "noise_mask" in samples:
            masks = samples["noise_mask"]
            if masks.shape[0] == 1:
                s["noise_mask"] = masks.clone()
            else:
                if masks.shape[0] < src.shape[0]:
                    masks = masks.repeat(math.ceil(src.shape[0] / masks.shape[0]), 1, 1, 1)[:src.shape[0]]
                s["noise_mask"] = masks[batch_index:batch_index + length].clone()
        # batch_index lets the sampler regenerate exactly these items' noise
        if "batch_index" not in s:
            s["batch_index"] = list(range(batch_index, batch_index + length))
        else:
            s["batch_index"] = samples["batch_index"][batch_index:batch_index + length]
        return (s,)


class RepeatLatentBatch:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "amount": ("INT", {"default": 1, "min": 1, "max": 64})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "repeat"
    CATEGORY = "latent/batch"

    def repeat(self, samples, amount):
        s = samples.copy()
        src = samples["samples"]
        s["samples"] = src.repeat((amount,) + (1,) * (src.ndim - 1))
        if "noise_mask" in samples and samples["noise_mask"].shape[0] > 1:
            masks = samples["noise_mask"]
            s["noise_mask"] = masks.repeat((amount,) + (1,) * (masks.ndim - 1))
        if "batch_index" in s:
            offset = max(s["batch_index"]) - min(s["batch_index"]) + 1
            s["batch_index"] = s["batch_index"] + [x + i * offset for i in range(1, amount) for x in s["batch_index"]]
        return (s,)


class LatentUpscale:
    crop_methods = ["disabled", "center"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "upscale_method": (UPSCALE_METHODS,),
                             "width": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 8}),
                             "height": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 8}),
                             "crop": (cls.crop_methods,)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "upscale"
    CATEGORY = "latent"

    def upscale(self, samples, upscale_method, width, height, crop):
        if width == 0 and height == 0:
            return (samples,)
        s = samples.copy()
        h, w = samples["samples"].shape[-2:]
        if width == 0:  # keep the aspect ratio from the given side
            height = max(64, height)
            width = max(64, round(w * height / h))
        elif height == 0:
            width = max(64, width)
            height = max(64, round(h * width / w))
        else:
            width, height = max(64, width), max(64, height)
        s["samples"] = common_upscale(samples["samples"], width // 8, height // 8, upscale_method, crop)
        return (s,)


class LatentUpscaleBy:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "upscale_method": (UPSCALE_METHODS,),
                             "scale_by": ("FLOAT", {"default": 1.5, "min": 0.01, "max": 8.0, "step": 0.01})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "upscale"
    CATEGORY = "latent"

    def upscale(self, samples, upscale_method, scale_by):
        s = samples.copy()
        width = round(samples["samples"].shape[-1] * scale_by)
        height = round(samples["samples"].shape[-2] * scale_by)
        s["samples"] = common_upscale(samples["samples"], width, height, upscale_method, "disabled")
        return (s,)


class LatentRotate:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",),
                             "rotation": (["none", "90 degrees", "180 degrees", "270 degrees"],)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "rotate"
    CATEGORY = "latent/transform"

    def rotate(self, samples, rotation):
        turns = {"90": 1, "180": 2, "270": 3}.get(rotation.split(" ")[0], 0)
        s = samples.copy()
        s["samples"] = torch.rot90(samples["samples"], k=turns, dims=[3, 2])
        return (s,)


class LatentFlip:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",),
                             "flip_method": (["x-axis: vertically", "y-axis: horizontally"],)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "flip"
    CATEGORY = "latent/transform"

    def flip(self, samples, flip_method):
        s = samples.copy()
        s["samples"] = torch.flip(samples["samples"], dims=[2] if flip_method.startswith("x") else [3])
        return (s,)


def _feather_mask(shape_from, shape_to, x, y, feather):
    """Linear ramps over `feather` latent pixels on each side not touching the canvas edge."""
    mask = torch.ones(shape_from)
    for t in range(feather):
        ramp = (1.0 / feather) * (t + 1)
        if y != 0:
            mask[:, :, t:1 + t, :] *= ramp
        if y + shape_from[2] < shape_to[2]:
            mask[:, :, mask.shape[2] - 1 - t:mask.shape[2] - t, :] *= ramp
        if x != 0:
            mask[:, :, :, t:1 + t] *= ramp
        if x + shape_from[3] < shape_to[3]:
            mask[:, :, :, mask.shape[3] - 1 - t:mask.shape[3] - t] *= ramp
    return mask


class LatentComposite:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples_to": ("LATENT",), "samples_from": ("LATENT",),
                             "x": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}),
                             "y": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}),
                             "feather": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "composite"
    CATEGORY = "latent"

    def composite(self, samples_to, samples_from, x, y, composite_method="normal", feather=0):
        x, y, feather = x // 8, y // 8, feather // 8
        out = samples_to.copy()
        canvas = samples_to["samples"].clone()
        dest = samples_to["samples"]
        src = samples_from["samples"][:, :, :dest.shape[2] - y, :dest.shape[3] - x]
        region = (slice(None), slice(None), slice(y, y + src.shape[2]), slice(x, x + src.shape[3]))
        if feather == 0:
            canvas[region] = src
        else:
            mask = _feather_mask(src.shape, dest.shape, x, y, feather).to(src)
            canvas[region] = src * mask + canvas[region] * (1 - mask)
        out["samples"] = canvas
        return (out,)


class LatentBlend:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples1": ("LATENT",), "samples2": ("LATENT",),
                             "blend_factor": ("FLOAT", {"default": 0.5, "min": 0, "max": 1, "step": 0.01})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "blend"
    CATEGORY = "_for_testing"

    def blend(self, samples1, samples2, blend_factor: float, blend_mode: str = "normal"):
        if blend_mode != "normal":
            raise ValueError(f"Unsupported blend mode: {blend_mode}")
        out = samples1.copy()
        a, b = samples1["samples"], samples2["samples"]
        if a.shape != b.shape:
            b = common_upscale(b, a.shape[3], a.shape[2], "bicubic", crop="center")
        out["samples"] = a * blend_factor + b * (1 - blend_factor)
        return (out,)


class LatentCrop:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",),
                             "width": ("INT", {"default": 512, "min": 64, "max": MAX_RESOLUTION, "step": 8}),
                             "height": ("INT", {"default": 512, "min": 64, "max": MAX_RESOLUTION, "step": 8}),
                             "x": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}),
                             "y": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "crop"
    CATEGORY = "latent/transform"

    def crop(self, samples, width, height, x, y):
        s = samples.copy()
        src = samples["samples"]
        x = min(x // 8, src.shape[3] - 8)  # keep at least 8 latent pixels (64 px)
        y = min(y // 8, src.shape[2] - 8)
        s["samples"] = src[:, :, y:y + height // 8, x:x + width // 8]
        return (s,)


class SetLatentNoiseMask:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "mask": ("MASK",)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "set_mask"
    CATEGORY = "latent/inpaint"

    def set_mask(self, samples, mask):
        s = samples.copy()
        s["noise_mask"] = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
        return (s,)


NODE_CLASS_MAPPINGS = {
    "EmptyLatentImage": EmptyLatentImage, "LatentFromBatch": LatentFromBatch, "RepeatLatentBatch": RepeatLatentBatch,
    "LatentUpscale": LatentUpscale, "LatentUpscaleBy": LatentUpscaleBy, "LatentRotate": LatentRotate,
    "LatentFlip": LatentFlip, "LatentComposite": LatentComposite, "LatentBlend": LatentBlend,
    "LatentCrop": LatentCrop, "SetLatentNoiseMask": SetLatentNoiseMask,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SetLatentNoiseMask": "Set Latent Noise Mask", "LatentRotate": "Rotate Latent", "LatentFlip": "Flip Latent",
    "LatentCrop": "Crop Latent", "EmptyLatentImage": "Empty Latent Image", "LatentUpscale": "Upscale Latent",
    "LatentUpscaleBy": "Upscale Latent By", "LatentComposite": "Latent Composite", "LatentBlend": "Latent Blend",
    "LatentFromBatch": "Latent From Batch", "RepeatLatentBatch": "Repeat Latent Batch",
}
