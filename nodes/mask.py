"""Mask nodes (ComfyUI's comfy_extras/nodes_mask, V3): solid, invert, convert to and from
images, crop, composite, feather, grow, threshold, and masked compositing of images/latents, mask preview."""
from __future__ import annotations

import numpy as np
import scipy.ndimage
import torch

from models.sampling.conds import repeat_to_batch_size
from nodes import v3 as io
from nodes.constants import MAX_RESOLUTION
from nodes.image_ops import image_alpha_fix, mask_to_image
from nodes.v3_ui import PreviewMask


def composite(destination, source, x, y, mask=None, multiplier=8, resize_source=False):
    """Paste `source` into `destination` ([B,C,H,W]) at (x, y) pixels, through `mask`;
    `multiplier` is 8 for latents (coordinates in image pixels), 1 for images."""
    source = source.to(destination.device)
    if resize_source:
        source = torch.nn.functional.interpolate(source, size=destination.shape[-2:], mode="bilinear")
    source = repeat_to_batch_size(source, destination.shape[0])
    x = max(-source.shape[-1] * multiplier, min(x, destination.shape[-1] * multiplier))
    y = max(-source.shape[-2] * multiplier, min(y, destination.shape[-2] * multiplier))
    left, top = x // multiplier, y // multiplier
    right, bottom = left + source.shape[-1], top + source.shape[-2]
    if mask is None:
        mask = torch.ones_like(source)
    else:
        mask = mask.to(destination.device, copy=True)
        mask = torch.nn.functional.interpolate(mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])),
                                               size=source.shape[-2:], mode="bilinear")
        mask = repeat_to_batch_size(mask, source.shape[0])
    visible_w = destination.shape[-1] - left + min(0, x)
    visible_h = destination.shape[-2] - top + min(0, y)
    mask = mask[:, :, :visible_h, :visible_w]
    if mask.ndim < source.ndim:
        mask = mask.unsqueeze(1)
    destination[..., top:bottom, left:right] = mask * source[..., :visible_h, :visible_w] \
        + (1 - mask) * destination[..., top:bottom, left:right]
    return destination


def _pos(name, default=0, step=1, minimum=0):
    return io.Int.Input(name, default=default, min=minimum, max=MAX_RESOLUTION, step=step)


class LatentCompositeMasked(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="LatentCompositeMasked", category="latent",
                         inputs=[io.Latent.Input("destination"), io.Latent.Input("source"), _pos("x", step=8),
                                 _pos("y", step=8), io.Boolean.Input("resize_source", default=False),
                                 io.Mask.Input("mask", optional=True)],
                         outputs=[io.Latent.Output()])

    @classmethod
    def execute(cls, destination, source, x, y, resize_source, mask=None):
        out = destination.copy()
        out["samples"] = composite(destination["samples"].clone(), source["samples"], x, y, mask, 8, resize_source)
        return io.NodeOutput(out)

    composite = execute  # the pre-V3 method name, still called by custom packs

class ImageCompositeMasked(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ImageCompositeMasked", category="image",
                         inputs=[io.Image.Input("destination"), io.Image.Input("source"), _pos("x"), _pos("y"),
                                 io.Boolean.Input("resize_source", default=False), io.Mask.Input("mask", optional=True)],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, destination, source, x, y, resize_source, mask=None):
        destination, source = image_alpha_fix(destination, source)
        out = composite(destination.clone().movedim(-1, 1), source.movedim(-1, 1), x, y, mask, 1, resize_source)
        return io.NodeOutput(out.movedim(1, -1))

    composite = execute  # the pre-V3 method name, still called by custom packs

class MaskToImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="MaskToImage", display_name="Convert Mask to Image", category="mask",
                         inputs=[io.Mask.Input("mask")], outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, mask):
        return io.NodeOutput(mask_to_image(mask))

    mask_to_image = execute  # the pre-V3 method name, still called by custom packs

class ImageToMask(io.ComfyNode):
    CHANNELS = ["red", "green", "blue", "alpha"]

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ImageToMask", display_name="Convert Image to Mask", category="mask",
                         inputs=[io.Image.Input("image"), io.Combo.Input("channel", options=cls.CHANNELS)],
                         outputs=[io.Mask.Output()])

    @classmethod
    def execute(cls, image, channel):
        return io.NodeOutput(image[:, :, :, cls.CHANNELS.index(channel)])

    image_to_mask = execute  # the pre-V3 method name, still called by custom packs

class ImageColorToMask(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ImageColorToMask", category="mask",
                         inputs=[io.Image.Input("image"),
                                 io.Int.Input("color", default=0, min=0, max=0xFFFFFF, step=1,
                                              display_mode=io.NumberDisplay.number)],
                         outputs=[io.Mask.Output()])

    @classmethod
    def execute(cls, image, color):
        rgb = (torch.clamp(image, 0, 1.0) * 255.0).round().to(torch.int)
        packed = (rgb[:, :, :, 0] << 16) + (rgb[:, :, :, 1] << 8) + rgb[:, :, :, 2]
        return io.NodeOutput(torch.where(packed == color, 1.0, 0).float())

    image_to_mask = execute  # the pre-V3 method name, still called by custom packs

class SolidMask(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SolidMask", category="mask",
                         inputs=[io.Float.Input("value", default=1.0, min=0.0, max=1.0, step=0.01),
                                 _pos("width", 512, minimum=1), _pos("height", 512, minimum=1)],
                         outputs=[io.Mask.Output()])

    @classmethod
    def execute(cls, value, width, height):
        return io.NodeOutput(torch.full((1, height, width), value, dtype=torch.float32))

    solid = execute  # the pre-V3 method name, still called by custom packs

class InvertMask(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="InvertMask", category="mask", inputs=[io.Mask.Input("mask")],
                         outputs=[io.Mask.Output()])

    @classmethod
    def execute(cls, mask):
        return io.NodeOutput(1.0 - mask)

    invert = execute  # the pre-V3 method name, still called by custom packs

class CropMask(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="CropMask", category="mask",
                         inputs=[io.Mask.Input("mask"), _pos("x"), _pos("y"), _pos("width", 512, minimum=1),
                                 _pos("height", 512, minimum=1)],
                         outputs=[io.Mask.Output()])

    @classmethod
    def execute(cls, mask, x, y, width, height):
        mask = mask.reshape((-1, mask.shape[-2], mask.shape[-1]))
        return io.NodeOutput(mask[:, y:y + height, x:x + width])

    crop = execute  # the pre-V3 method name, still called by custom packs

class MaskComposite(io.ComfyNode):
    OPERATIONS = ["multiply", "add", "subtract", "and", "or", "xor"]

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="MaskComposite", category="mask",
                         inputs=[io.Mask.Input("destination"), io.Mask.Input("source"), _pos("x"), _pos("y"),
                                 io.Combo.Input("operation", options=cls.OPERATIONS)],
                         outputs=[io.Mask.Output()])

    @classmethod
    def execute(cls, destination, source, x, y, operation):
        out = destination.reshape((-1, destination.shape[-2], destination.shape[-1])).clone()
        source = source.reshape((-1, source.shape[-2], source.shape[-1]))
        right, bottom = min(x + source.shape[-1], out.shape[-1]), min(y + source.shape[-2], out.shape[-2])
        src = source[:, :bottom - y, :right - x]
        dst = out[:, y:bottom, x:right]
        if operation == "multiply":
            res = dst * src
        elif operation == "add":
            res = dst + src
        elif operation == "subtract":
            res = dst - src
        else:
            fn = {"and": torch.bitwise_and, "or": torch.bitwise_or, "xor": torch.bitwise_xor}[operation]
            res = fn(dst.round().bool(), src.round().bool()).float()
        out[:, y:bottom, x:right] = res
        return io.NodeOutput(torch.clamp(out, 0.0, 1.0))

    combine = execute  # the pre-V3 method name, still called by custom packs

class FeatherMask(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="FeatherMask", category="mask",
                         inputs=[io.Mask.Input("mask"), _pos("left"), _pos("top"), _pos("right"), _pos("bottom")],
                         outputs=[io.Mask.Output()])

    @classmethod
    def execute(cls, mask, left, top, right, bottom):
        out = mask.reshape((-1, mask.shape[-2], mask.shape[-1])).clone()
        left, right = min(left, out.shape[-1]), min(right, out.shape[-1])
        top, bottom = min(top, out.shape[-2]), min(bottom, out.shape[-2])
        for i in range(left):
            out[:, :, i] *= (i + 1.0) / left
        for i in range(right):  # index -0 is column 0: ComfyUI's off-by-one kept for identical masks
            out[:, :, -i] *= (i + 1) / right
        for i in range(top):
            out[:, i, :] *= (i + 1) / top
        for i in range(bottom):
            out[:, -i, :] *= (i + 1) / bottom
        return io.NodeOutput(out)

    feather = execute  # the pre-V3 method name, still called by custom packs

class GrowMask(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GrowMask", display_name="Grow Mask", category="mask",
                         inputs=[io.Mask.Input("mask"), _pos("expand", minimum=-MAX_RESOLUTION),
                                 io.Boolean.Input("tapered_corners", default=True)],
                         outputs=[io.Mask.Output()])

    @classmethod
    def execute(cls, mask, expand, tapered_corners):
        c = 0 if tapered_corners else 1
        footprint = np.array([[c, 1, c], [1, 1, 1], [c, 1, c]])
        op = scipy.ndimage.grey_erosion if expand < 0 else scipy.ndimage.grey_dilation
        out = []
        for m in mask.reshape((-1, mask.shape[-2], mask.shape[-1])):
            arr = m.numpy()
            for _ in range(abs(expand)):
                arr = op(arr, footprint=footprint)
            out.append(torch.from_numpy(arr))
        return io.NodeOutput(torch.stack(out, dim=0))

    expand_mask = execute  # the pre-V3 method name, still called by custom packs

class ThresholdMask(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ThresholdMask", category="mask",
                         inputs=[io.Mask.Input("mask"), io.Float.Input("value", default=0.5, min=0.0, max=1.0, step=0.01)],
                         outputs=[io.Mask.Output()])

    @classmethod
    def execute(cls, mask, value):
        return io.NodeOutput((mask > value).float())

    image_to_mask = execute  # the pre-V3 method name, still called by custom packs

class MaskPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="MaskPreview", display_name="Preview Mask", category="mask",
                         description="Saves the input images to your ComfyUI output directory.",  # sic, as ComfyUI
                         inputs=[io.Mask.Input("mask")], hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
                         is_output_node=True)

    @classmethod
    def execute(cls, mask, filename_prefix="ComfyUI"):
        return io.NodeOutput(ui=PreviewMask(mask, cls=cls))


V3_NODES = [LatentCompositeMasked, ImageCompositeMasked, MaskToImage, ImageToMask, ImageColorToMask, SolidMask,
            InvertMask, CropMask, MaskComposite, FeatherMask, GrowMask, ThresholdMask,
            MaskPreview]
