"""Image geometry and batch nodes of ComfyUI's comfy_extras/nodes_images (V3 schema nodes):
crop, rotate, flip, stitch, resize-and-pad, scale to a max side, batch picking and repeating,
noise, size."""
from __future__ import annotations

import torch

from nodes import v3 as io
from nodes.constants import MAX_RESOLUTION
from nodes.image_ops import resize_image
from nodes.settings import send_progress_text


def _int(name, default, minimum, maximum=MAX_RESOLUTION, step=1):
    return io.Int.Input(name, default=default, min=minimum, max=maximum, step=step)


class ImageCrop(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ImageCrop", display_name="Image Crop", category="image/transform",
                         inputs=[io.Image.Input("image"), _int("width", 512, 1), _int("height", 512, 1),
                                 _int("x", 0, 0), _int("y", 0, 0)],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image, width, height, x, y):
        # the corner is clamped inside the image; the size is whatever remains
        x, y = min(x, image.shape[2] - 1), min(y, image.shape[1] - 1)
        return io.NodeOutput(image[:, y:y + height, x:x + width, :])

    crop = execute


class RepeatImageBatch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="RepeatImageBatch", category="image/batch",
                         inputs=[io.Image.Input("image"), io.Int.Input("amount", default=1, min=1, max=4096)],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image, amount):
        return io.NodeOutput(image.repeat((amount, 1, 1, 1)))

    repeat = execute


class ImageFromBatch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ImageFromBatch", category="image/batch",
                         inputs=[io.Image.Input("image"), io.Int.Input("batch_index", default=0, min=0, max=4095),
                                 io.Int.Input("length", default=1, min=1, max=4096)],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image, batch_index, length):
        start = min(image.shape[0] - 1, batch_index)
        length = min(image.shape[0] - start, length)
        return io.NodeOutput(image[start:start + length].clone())

    frombatch = execute


class ImageAddNoise(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ImageAddNoise", category="image",
                         inputs=[io.Image.Input("image"),
                                 io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                                              control_after_generate=True,
                                              tooltip="The random seed used for creating the noise."),
                                 io.Float.Input("strength", default=0.5, min=0.0, max=1.0, step=0.01)],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image, seed, strength):
        # CPU noise from the global generator reseeded, so a seed gives ComfyUI's exact pixels
        generator = torch.manual_seed(seed)
        noise = torch.randn(image.size(), generator=generator, device="cpu").to(image)
        return io.NodeOutput(torch.clip(image + strength * noise, min=0.0, max=1.0))

    repeat = execute


def _match_batch(image1, image2):
    """Pad the shorter batch by repeating its last image."""
    n = max(image1.shape[0], image2.shape[0])

    def grow(img):
        return img if img.shape[0] == n else torch.cat([img, img[-1:].repeat(n - img.shape[0], 1, 1, 1)])
    return grow(image1), grow(image2)


def _pad_centered(img, dim, target, value):
    """Pad IMAGE along H (dim=1) or W (dim=2) to `target`, half before (floor), rest after."""
    extra = target - img.shape[dim]
    if extra <= 0:
        return img
    before, after = extra // 2, extra - extra // 2
    pad = (0, 0, 0, 0, before, after) if dim == 1 else (0, 0, before, after)
    return torch.nn.functional.pad(img, pad, mode="constant", value=value)


def _add_opaque_channels(img, channels):
    if img.shape[-1] >= channels:
        return img
    ones = torch.ones(*img.shape[:-1], channels - img.shape[-1], device=img.device)
    return torch.cat([img, ones], dim=-1)


class ImageStitch(io.ComfyNode):
    COLORS = {"white": 1.0, "black": 0.0, "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ImageStitch", display_name="Image Stitch",
            description="Stitches image2 to image1 in the specified direction.\n"
                        "If image2 is not provided, returns image1 unchanged.\n"
                        "Optional spacing can be added between images.",
            category="image/transform",
            inputs=[io.Image.Input("image1"),
                    io.Combo.Input("direction", options=["right", "down", "left", "up"], default="right"),
                    io.Boolean.Input("match_image_size", default=True),
                    io.Int.Input("spacing_width", default=0, min=0, max=1024, step=2),
                    io.Combo.Input("spacing_color", options=list(cls.COLORS), default="white"),
                    io.Image.Input("image2", optional=True)],
            outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image1, direction, match_image_size, spacing_width, spacing_color, image2=None):
        if image2 is None:
            return io.NodeOutput(image1)
        image1, image2 = _match_batch(image1, image2)
        horizontal = direction in ("left", "right")
        color = cls.COLORS[spacing_color]
        if match_image_size:  # image2 takes image1's height (side by side) or width (stacked)
            h1, w1 = image1.shape[1:3]
            aspect = image2.shape[2] / image2.shape[1]
            tw, th = (int(h1 * aspect), h1) if horizontal else (w1, int(w1 / aspect))
            image2 = resize_image(image2, tw, th, "lanczos")
        else:  # pad the other side to the larger size (colour only when it is grey-level)
            value = 0.0 if isinstance(color, tuple) else color
            dim = 1 if horizontal else 2
            target = max(image1.shape[dim], image2.shape[dim])
            image1, image2 = _pad_centered(image1, dim, target, value), _pad_centered(image2, dim, target, value)
        channels = max(image1.shape[-1], image2.shape[-1])
        image1, image2 = _add_opaque_channels(image1, channels), _add_opaque_channels(image2, channels)
        parts = [image2, image1] if direction in ("left", "up") else [image1, image2]
        if spacing_width > 0:
            spacing_width += spacing_width % 2
            if horizontal:
                shape = (image1.shape[0], max(image1.shape[1], image2.shape[1]), spacing_width, channels)
            else:
                shape = (image1.shape[0], spacing_width, max(image1.shape[2], image2.shape[2]), channels)
            spacing = torch.full(shape, 0.0, device=image1.device)
            if isinstance(color, tuple):
                for i, c in enumerate(color[:channels]):
                    spacing[..., i] = c
            else:
                spacing[..., :min(3, channels)] = color
            if channels == 4:
                spacing[..., 3] = 1.0
            parts.insert(1, spacing)
        return io.NodeOutput(torch.cat(parts, dim=2 if horizontal else 1))

    stitch = execute


class ResizeAndPadImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ResizeAndPadImage", category="image/transform",
                         inputs=[io.Image.Input("image"), _int("target_width", 512, 1), _int("target_height", 512, 1),
                                 io.Combo.Input("padding_color", options=["white", "black"]),
                                 io.Combo.Input("interpolation",
                                                options=["area", "bicubic", "nearest-exact", "bilinear", "lanczos"])],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image, target_width, target_height, padding_color, interpolation):
        b, h, w, c = image.shape
        scale = min(target_width / w, target_height / h)
        new_w, new_h = int(w * scale), int(h * scale)
        resized = resize_image(image, new_w, new_h, interpolation)
        out = torch.full((b, target_height, target_width, c), 0.0 if padding_color == "black" else 1.0,
                         dtype=image.dtype, device=image.device)
        top, left = (target_height - new_h) // 2, (target_width - new_w) // 2
        out[:, top:top + new_h, left:left + new_w, :] = resized
        return io.NodeOutput(out)

    resize_and_pad = execute


class GetImageSize(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GetImageSize", display_name="Get Image Size",
                         description="Returns width and height of the image, and passes it through unchanged.",
                         category="image", inputs=[io.Image.Input("image")],
                         outputs=[io.Int.Output(display_name="width"), io.Int.Output(display_name="height"),
                                  io.Int.Output(display_name="batch_size")],
                         hidden=[io.Hidden.unique_id])

    @classmethod
    def execute(cls, image):
        batch, height, width = image.shape[0], image.shape[1], image.shape[2]
        if cls.hidden.unique_id:
            send_progress_text(f"width: {width}, height: {height}\n batch size: {batch}", cls.hidden.unique_id)
        return io.NodeOutput(width, height, batch)

    get_size = execute


class ImageRotate(io.ComfyNode):
    ROTATIONS = ["none", "90 degrees", "180 degrees", "270 degrees"]

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ImageRotate", category="image/transform",
                         inputs=[io.Image.Input("image"), io.Combo.Input("rotation", options=cls.ROTATIONS)],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image, rotation):
        quarter_turns = {"90": 1, "180": 2, "270": 3}.get(rotation.split(" ")[0], 0)
        # dims (W, H): clockwise on screen
        return io.NodeOutput(torch.rot90(image, k=quarter_turns, dims=[2, 1]))

    rotate = execute


class ImageFlip(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ImageFlip", category="image/transform",
                         inputs=[io.Image.Input("image"),
                                 io.Combo.Input("flip_method", options=["x-axis: vertically", "y-axis: horizontally"])],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image, flip_method):
        if flip_method.startswith("x"):
            image = torch.flip(image, dims=[1])
        elif flip_method.startswith("y"):
            image = torch.flip(image, dims=[2])
        return io.NodeOutput(image)

    flip = execute


class ImageScaleToMaxDimension(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ImageScaleToMaxDimension", category="image/upscaling",
                         inputs=[io.Image.Input("image"),
                                 # ComfyUI lists bilinear twice; the frontend shows what it is sent
                                 io.Combo.Input("upscale_method",
                                                options=["area", "lanczos", "bilinear", "nearest-exact", "bilinear", "bicubic"]),
                                 _int("largest_size", 512, 0)],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image, upscale_method, largest_size):
        h, w = image.shape[1], image.shape[2]
        if h > w:
            w, h = round((w / h) * largest_size), largest_size
        elif w > h:
            w, h = largest_size, round((h / w) * largest_size)
        else:
            w = h = largest_size
        return io.NodeOutput(resize_image(image, w, h, upscale_method))

    upscale = execute


V3_NODES = [ImageCrop, RepeatImageBatch, ImageFromBatch, ImageAddNoise, ImageStitch, ResizeAndPadImage,
            GetImageSize, ImageRotate, ImageFlip, ImageScaleToMaxDimension]
