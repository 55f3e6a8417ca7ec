"""ComfyUI's comfy_extras/nodes_morphology (V3 schema): Morphology ("ImageMorphology"),
ImageRGBToYUV, ImageYUVToRGB, through kornia as in ComfyUI."""
from __future__ import annotations

import torch

from nodes import v3 as io

MORPHOLOGY_OPERATIONS = ["erode", "dilate", "open", "close", "gradient", "bottom_hat", "top_hat"]


class Morphology(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="Morphology", display_name="ImageMorphology", category="image/postprocessing",
                         inputs=[io.Image.Input("image"),
                                 io.Combo.Input("operation", options=MORPHOLOGY_OPERATIONS),
                                 io.Int.Input("kernel_size", default=3, min=3, max=999, step=1)],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image, operation, kernel_size):
        from kornia import morphology
        ops = {"erode": morphology.erosion, "dilate": morphology.dilation, "open": morphology.opening,
               "close": morphology.closing, "gradient": morphology.gradient, "top_hat": morphology.top_hat,
               "bottom_hat": morphology.bottom_hat}
        if operation not in ops:
            raise ValueError(f"Invalid operation {operation} for morphology. Must be one of {', '.join(ops)}")
        kernel = torch.ones(kernel_size, kernel_size)
        return io.NodeOutput(ops[operation](image.movedim(-1, 1), kernel).movedim(1, -1))


class ImageRGBToYUV(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ImageRGBToYUV", category="image/batch", inputs=[io.Image.Input("image")],
                         outputs=[io.Image.Output(display_name="Y"), io.Image.Output(display_name="U"),
                                  io.Image.Output(display_name="V")])

    @classmethod
    def execute(cls, image):
        import kornia.color
        out = kornia.color.rgb_to_ycbcr(image.movedim(-1, 1)).movedim(1, -1)
        return io.NodeOutput(*(out[..., c:c + 1].expand_as(image) for c in range(3)))


class ImageYUVToRGB(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ImageYUVToRGB", category="image/batch",
                         inputs=[io.Image.Input("Y"), io.Image.Input("U"), io.Image.Input("V")],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, Y, U, V):
        import kornia.color
        planes = torch.cat([p.mean(dim=-1, keepdim=True) for p in (Y, U, V)], dim=-1)
        return io.NodeOutput(kornia.color.ycbcr_to_rgb(planes.movedim(-1, 1)).movedim(1, -1))


V3_NODES = [Morphology, ImageRGBToYUV, ImageYUVToRGB]
