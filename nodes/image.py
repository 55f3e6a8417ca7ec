"""Image nodes of ComfyUI's core (nodes.py): empty, invert, scale, batch, outpaint padding."""
from __future__ import annotations

import torch

from nodes.constants import MAX_RESOLUTION
from nodes.image_ops import CROP_METHODS, UPSCALE_METHODS, resize_image as _resize

IMAGE_UPSCALE_METHODS = UPSCALE_METHODS


class EmptyImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
                             "height": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
                             "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
                             "color": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "generate"
    CATEGORY = "image"

    def generate(self, width, height, batch_size=1, color=0):
        channels = [torch.full([batch_size, height, width, 1], ((color >> shift) & 0xFF) / 0xFF)
                    for shift in (16, 8, 0)]
        return (torch.cat(channels, dim=-1),)


class ImageInvert:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "invert"
    CATEGORY = "image"

    def invert(self, image):
        return (1.0 - image,)


class ImageScale:
    upscale_methods = IMAGE_UPSCALE_METHODS
    crop_methods = CROP_METHODS

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "upscale_method": (IMAGE_UPSCALE_METHODS,),
                             "width": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                             "height": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                             "crop": (cls.crop_methods,)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    def upscale(self, image, upscale_method, width, height, crop):
        if width == 0 and height == 0:
            return (image,)
        h, w = image.shape[1], image.shape[2]
        if width == 0:  # keep the aspect ratio from the given side
            width = max(1, round(w * height / h))
        elif height == 0:
            height = max(1, round(h * width / w))
        return (_resize(image, width, height, upscale_method, crop),)


class ImageScaleBy:
    upscale_methods = IMAGE_UPSCALE_METHODS

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "upscale_method": (IMAGE_UPSCALE_METHODS,),
                             "scale_by": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    def upscale(self, image, upscale_method, scale_by):
        width, height = round(image.shape[2] * scale_by), round(image.shape[1] * scale_by)
        return (_resize(image, width, height, upscale_method, "disabled"),)


class ImageBatch:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image1": ("IMAGE",), "image2": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "batch"
    CATEGORY = "image"
    DEPRECATED = True

    def batch(self, image1, image2):
        if image1.shape[-1] != image2.shape[-1]:  # RGB + RGBA: add an opaque alpha
            if image1.shape[-1] > image2.shape[-1]:
                image2 = torch.nn.functional.pad(image2, (0, 1), mode="constant", value=1.0)
            else:
                image1 = torch.nn.functional.pad(image1, (0, 1), mode="constant", value=1.0)
        if image1.shape[1:] != image2.shape[1:]:
            image2 = _resize(image2, image1.shape[2], image1.shape[1], "bilinear", "center")
        return (torch.cat((image1, image2), dim=0),)


class ImagePadForOutpaint:
    @classmethod
    def INPUT_TYPES(cls):
        side = {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}
        return {"required": {"image": ("IMAGE",), "left": ("INT", side), "top": ("INT", side),
                             "right": ("INT", side), "bottom": ("INT", side),
                             "feathering": ("INT", {"default": 40, "min": 0, "max": MAX_RESOLUTION, "step": 1})}}

    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "expand_image"
    CATEGORY = "image"

    def expand_image(self, image, left, top, right, bottom, feathering):
        b, h, w, c = image.size()
        out = torch.ones((b, h + top + bottom, w + left + right, c), dtype=torch.float32) * 0.5  # grey fill
        out[:, top:top + h, left:left + w, :] = image
        mask = torch.ones((h + top + bottom, w + left + right), dtype=torch.float32)
        inner = torch.zeros((h, w), dtype=torch.float32)
        if feathering > 0 and feathering * 2 < h and feathering * 2 < w:
            # distance to the nearest padded side (sides without padding don't count); the ramp
            # is computed in double precision like ComfyUI's per-pixel Python floats
            i = torch.arange(h, dtype=torch.float64).view(-1, 1).expand(h, w)
            j = torch.arange(w, dtype=torch.float64).view(1, -1).expand(h, w)
            far_h, far_w = torch.full_like(i, h), torch.full_like(j, w)
            dist = torch.minimum(torch.minimum(i if top else far_h, (h - i) if bottom else far_h),
                                 torch.minimum(j if left else far_w, (w - j) if right else far_w))
            ramp = ((feathering - dist) / feathering) ** 2
            inner = torch.where(dist < feathering, ramp, 0.0).float()
        mask[top:top + h, left:left + w] = inner
        return out, mask.unsqueeze(0)


NODE_CLASS_MAPPINGS = {"EmptyImage": EmptyImage, "ImageInvert": ImageInvert, "ImageScale": ImageScale,
                       "ImageScaleBy": ImageScaleBy, "ImageBatch": ImageBatch,
                       "ImagePadForOutpaint": ImagePadForOutpaint}
NODE_DISPLAY_NAME_MAPPINGS = {"ImageScale": "Upscale Image", "ImageScaleBy": "Upscale Image By",
                              "ImageInvert": "Invert Image", "ImagePadForOutpaint": "Pad Image for Outpainting",
                              "ImageBatch": "Batch Images"}
