"""SDXL text encoding (ComfyUI's comfy_extras.nodes_clip_sdxl, V3): separate prompts for CLIP-G and
CLIP-L plus the size/crop (base) or aesthetic-score (refiner) values SDXL's ADM vector is made of."""
from __future__ import annotations

from models.clip import sdxl_tokens
from nodes import v3 as io
from nodes.constants import MAX_RESOLUTION


class CLIPTextEncodeSDXLRefiner(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CLIPTextEncodeSDXLRefiner", category="advanced/conditioning",
            inputs=[io.Float.Input("ascore", default=6.0, min=0.0, max=1000.0, step=0.01),
                    io.Int.Input("width", default=1024, min=0, max=MAX_RESOLUTION),
                    io.Int.Input("height", default=1024, min=0, max=MAX_RESOLUTION),
                    io.String.Input("text", multiline=True, dynamic_prompts=True),
                    io.Clip.Input("clip")],
            outputs=[io.Conditioning.Output()])

    @classmethod
    def execute(cls, clip, ascore, width, height, text) -> io.NodeOutput:
        add = {"aesthetic_score": ascore, "width": width, "height": height}
        return io.NodeOutput(clip.encode_from_tokens_scheduled(clip.tokenize(text), add_dict=add))


class CLIPTextEncodeSDXL(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        size = dict(min=0, max=MAX_RESOLUTION)
        return io.Schema(
            node_id="CLIPTextEncodeSDXL", category="advanced/conditioning",
            inputs=[io.Clip.Input("clip"),
                    io.Int.Input("width", default=1024, **size), io.Int.Input("height", default=1024, **size),
                    io.Int.Input("crop_w", default=0, **size), io.Int.Input("crop_h", default=0, **size),
                    io.Int.Input("target_width", default=1024, **size),
                    io.Int.Input("target_height", default=1024, **size),
                    io.String.Input("text_g", multiline=True, dynamic_prompts=True),
                    io.String.Input("text_l", multiline=True, dynamic_prompts=True)],
            outputs=[io.Conditioning.Output()])

    @classmethod
    def execute(cls, clip, width, height, crop_w, crop_h, target_width, target_height, text_g,
                text_l) -> io.NodeOutput:
        add = {"width": width, "height": height, "crop_w": crop_w, "crop_h": crop_h,
               "target_width": target_width, "target_height": target_height}
        return io.NodeOutput(clip.encode_from_tokens_scheduled(sdxl_tokens(clip, text_g, text_l), add_dict=add))


V3_NODES = [CLIPTextEncodeSDXLRefiner, CLIPTextEncodeSDXL]
