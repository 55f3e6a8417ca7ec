"""Post-processing nodes of ComfyUI's comfy_extras/nodes_post_processing (V3 schema nodes):
blend, blur, sharpen, quantize, and scaling to a pixel count."""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from nodes import v3 as io
from nodes.image_ops import UPSCALE_METHODS, filter_with_kernel, gaussian_kernel, image_alpha_fix, resize_image


class Blend(io.ComfyNode):
    MODES = ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ImageBlend", category="image/postprocessing",
                         inputs=[io.Image.Input("image1"), io.Image.Input("image2"),
                                 io.Float.Input("blend_factor", default=0.5, min=0.0, max=1.0, step=0.01),
                                 io.Combo.Input("blend_mode", options=cls.MODES)],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image1, image2, blend_factor, blend_mode):
        image1, image2 = image_alpha_fix(image1, image2)
        image2 = image2.to(image1.device)
        if image1.shape != image2.shape:  # image2 is fitted to image1 (bicubic, centre crop)
            image2 = resize_image(image2, image1.shape[2], image1.shape[1], "bicubic", "center")
        blended = cls.blend_mode(image1, image2, blend_mode)
        return io.NodeOutput(torch.clamp(image1 * (1 - blend_factor) + blended * blend_factor, 0, 1))

    @classmethod
    def blend_mode(cls, a, b, mode):
        if mode == "normal":
            return b
        if mode == "multiply":
            return a * b
        if mode == "screen":
            return 1 - (1 - a) * (1 - b)
        if mode == "overlay":
            return torch.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b))
        if mode == "soft_light":  # the W3C soft-light formula
            return torch.where(b <= 0.5, a - (1 - 2 * b) * a * (1 - a), a + (2 * b - 1) * (cls.g(a) - a))
        if mode == "difference":
            return a - b
        raise ValueError(f"Unsupported blend mode: {mode}")

    @classmethod
    def g(cls, x):
        return torch.where(x <= 0.25, ((16 * x - 12) * x + 4) * x, torch.sqrt(x))


class Blur(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ImageBlur", category="image/postprocessing",
                         inputs=[io.Image.Input("image"),
                                 io.Int.Input("blur_radius", default=1, min=1, max=31, step=1),
                                 io.Float.Input("sigma", default=1.0, min=0.1, max=10.0, step=0.1)],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image, blur_radius, sigma):
        if blur_radius == 0:
            return io.NodeOutput(image)
        kernel = gaussian_kernel(blur_radius * 2 + 1, sigma, device=image.device)
        return io.NodeOutput(filter_with_kernel(image, kernel, blur_radius))


class Quantize(io.ComfyNode):
    DITHERS = ["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"]

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ImageQuantize", category="image/postprocessing",
                         inputs=[io.Image.Input("image"), io.Int.Input("colors", default=256, min=1, max=256, step=1),
                                 io.Combo.Input("dither", options=cls.DITHERS)],
                         outputs=[io.Image.Output()])

    @staticmethod
    def bayer_matrix(level: int) -> np.ndarray:
        """The 2^level x 2^level ordered-dither matrix, centred on 0, in (-0.5, 0.5)."""
        if level == 0:
            return np.zeros((1, 1), "float32")
        q = 4 ** level
        m = q * Quantize.bayer_matrix(level - 1)
        return np.block([[m - 1.5, m + 0.5], [m + 1.5, m - 0.5]]) / q

    @staticmethod
    def bayer(im, pal_im, order):
        """Ordered dithering: add a tiled threshold offset (scaled to the palette spacing), then
        map to the palette without error diffusion."""
        spread = 2 * 256 / (len(pal_im.getpalette()) // 3)
        matrix = torch.from_numpy(spread * Quantize.bayer_matrix(int(math.log2(order))) + 0.5)
        pixels = torch.from_numpy(np.array(im).astype(np.float32))
        tiled = matrix.tile(math.ceil(pixels.shape[0] / matrix.shape[0]),
                            math.ceil(pixels.shape[1] / matrix.shape[1])).unsqueeze(-1)
        pixels.add_(tiled[:pixels.shape[0], :pixels.shape[1]]).clamp_(0, 255)
        return Image.fromarray(pixels.to(torch.uint8).numpy()).quantize(palette=pal_im, dither=Image.Dither.NONE)

    @classmethod
    def execute(cls, image, colors, dither):
        result = torch.zeros_like(image)
        for b in range(image.shape[0]):
            im = Image.fromarray((image[b] * 255).to(torch.uint8).numpy())
            palette = im.quantize(colors=colors)  # quantizing against a palette image (Pillow issue 5836)
            if dither == "none":
                out = im.quantize(palette=palette, dither=Image.Dither.NONE)
            elif dither == "floyd-steinberg":
                out = im.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
            elif dither.startswith("bayer"):
                out = cls.bayer(im, palette, int(dither.split("-")[-1]))
            else:
                raise ValueError(f"Unknown dither: {dither}")
            result[b] = torch.tensor(np.array(out.convert("RGB"))).float() / 255
        return io.NodeOutput(result)


class Sharpen(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ImageSharpen", category="image/postprocessing",
                         inputs=[io.Image.Input("image"),
                                 io.Int.Input("sharpen_radius", default=1, min=1, max=31, step=1),
                                 io.Float.Input("sigma", default=1.0, min=0.1, max=10.0, step=0.01),
                                 io.Float.Input("alpha", default=1.0, min=0.0, max=5.0, step=0.01)],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image, sharpen_radius, sigma, alpha):
        if sharpen_radius == 0:
            return io.NodeOutput(image)
        size = sharpen_radius * 2 + 1
        # unsharp mask as one kernel: -10*alpha*gaussian, centre raised so the kernel sums to 1
        kernel = (gaussian_kernel(size, sigma, device=image.device) * -(alpha * 10)).to(dtype=image.dtype)
        c = size // 2
        kernel[c, c] = kernel[c, c] - kernel.sum() + 1.0
        return io.NodeOutput(torch.clamp(filter_with_kernel(image, kernel, sharpen_radius), 0, 1))


class ImageScaleToTotalPixels(io.ComfyNode):
    upscale_methods = UPSCALE_METHODS
    crop_methods = ["disabled", "center"]

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ImageScaleToTotalPixels", category="image/upscaling",
                         inputs=[io.Image.Input("image"), io.Combo.Input("upscale_method", options=cls.upscale_methods),
                                 io.Float.Input("megapixels", default=1.0, min=0.01, max=16.0, step=0.01),
                                 io.Int.Input("resolution_steps", default=1, min=1, max=256)],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image, upscale_method, megapixels, resolution_steps):
        h, w = image.shape[1], image.shape[2]
        scale_by = math.sqrt(megapixels * 1024 * 1024 / (w * h))
        width = round(w * scale_by / resolution_steps) * resolution_steps
        height = round(h * scale_by / resolution_steps) * resolution_steps
        return io.NodeOutput(resize_image(image, int(width), int(height), upscale_method))


V3_NODES = [Blend, Blur, Quantize, Sharpen, ImageScaleToTotalPixels]
