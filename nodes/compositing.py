"""Image compositing and transform nodes of ComfyUI's comfy_extras (V3): alpha split/join,
crop, blend."""
from __future__ import annotations

import torch

from models.resize import common_upscale
from nodes import v3 as io
from nodes.constants import MAX_RESOLUTION
from nodes.mask import image_alpha_fix


class SplitImageWithAlpha(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SplitImageWithAlpha", display_name="Split Image with Alpha",
                         category="mask/compositing", inputs=[io.Image.Input("image")],
                         outputs=[io.Image.Output(), io.Mask.Output()])

    @classmethod
    def execute(cls, image):
        rgb = [i[:, :, :3] for i in image]
        alpha = [i[:, :, 3] if i.shape[2] > 3 else torch.ones_like(i[:, :, 0]) for i in image]
        return io.NodeOutput(torch.stack(rgb), 1.0 - torch.stack(alpha))


class JoinImageWithAlpha(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="JoinImageWithAlpha", display_name="Join Image with Alpha",
                         category="mask/compositing", inputs=[io.Image.Input("image"), io.Mask.Input("alpha")],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image, alpha):
        n = min(len(image), len(alpha))
        alpha = 1.0 - torch.nn.functional.interpolate(alpha.reshape((-1, 1, alpha.shape[-2], alpha.shape[-1])),
                                                      size=image.shape[1:3], mode="bilinear").squeeze(1)
        return io.NodeOutput(torch.stack([torch.cat((image[i][:, :, :3], alpha[i].unsqueeze(2)), dim=2)
                                          for i in range(n)]))


class ImageCrop(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_images"
    @classmethod
    def define_schema(cls):
        def pos(name, default, minimum):
            return io.Int.Input(name, default=default, min=minimum, max=MAX_RESOLUTION, step=1)
        return io.Schema(node_id="ImageCrop", display_name="Image Crop", category="image/transform",
                         inputs=[io.Image.Input("image"), pos("width", 512, 1), pos("height", 512, 1),
                                 pos("x", 0, 0), pos("y", 0, 0)],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image, width, height, x, y):
        x, y = min(x, image.shape[2] - 1), min(y, image.shape[1] - 1)
        return io.NodeOutput(image[:, y:y + height, x:x + width, :])


class ImageBlend(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_post_processing"
    MODES = ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ImageBlend", category="image/postprocessing",
                         inputs=[io.Image.Input("image1"), io.Image.Input("image2"),
                                 io.Float.Input("blend_factor", default=0.5, min=0.0, max=1.0, step=0.01),
                                 io.Combo.Input("blend_mode", options=cls.MODES)],
                         outputs=[io.Image.Output()])

    @staticmethod
    def _soft_light_g(x):
        return torch.where(x <= 0.25, ((16 * x - 12) * x + 4) * x, torch.sqrt(x))

    @classmethod
    def _blend(cls, a, b, mode):
        if mode == "normal":
            return b
        if mode == "multiply":
            return a * b
        if mode == "screen":
            return 1 - (1 - a) * (1 - b)
        if mode == "overlay":
            return torch.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b))
        if mode == "soft_light":
            return torch.where(b <= 0.5, a - (1 - 2 * b) * a * (1 - a), a + (2 * b - 1) * (cls._soft_light_g(a) - a))
        if mode == "difference":
            return a - b
        raise ValueError(f"Unsupported blend mode: {mode}")

    @classmethod
    def execute(cls, image1, image2, blend_factor, blend_mode):
        image1, image2 = image_alpha_fix(image1, image2)
        if image1.shape != image2.shape:
            image2 = common_upscale(image2.permute(0, 3, 1, 2), image1.shape[2], image1.shape[1], "bicubic",
                                    "center").permute(0, 2, 3, 1)
        out = image1 * (1 - blend_factor) + cls._blend(image1, image2, blend_mode) * blend_factor
        return io.NodeOutput(torch.clamp(out, 0, 1))


V3_NODES = [SplitImageWithAlpha, JoinImageWithAlpha, ImageCrop, ImageBlend]
