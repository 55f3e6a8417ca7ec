"""ComfyUI's Canny node (comfy_extras/nodes_canny, V3 schema): kornia's Canny edge detector, the
library ComfyUI uses, so the edge maps are ComfyUI's (thresholds are on 0..1 gradient magnitudes)."""
from __future__ import annotations

from nodes import v3 as io


class Canny(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="Canny", category="image/preprocessors",
                         inputs=[io.Image.Input("image"),
                                 io.Float.Input("low_threshold", default=0.4, min=0.01, max=0.99, step=0.01),
                                 io.Float.Input("high_threshold", default=0.8, min=0.01, max=0.99, step=0.01)],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image, low_threshold, high_threshold):
        from kornia.filters import canny
        _, edges = canny(image.movedim(-1, 1), low_threshold, high_threshold)
        return io.NodeOutput(edges.repeat(1, 3, 1, 1).movedim(1, -1))

    detect_edge = execute


V3_NODES = [Canny]
