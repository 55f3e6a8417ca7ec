"""Upscale-model nodes of ComfyUI's comfy_extras/nodes_upscale_model (V3 schema nodes):
load an ESRGAN-family / SwinIR / ... model from models/upscale_models and run it over an
image in tiles (models/upscale.py)."""
from __future__ import annotations

from models import folders
from models.upscale import load_upscale_model, upscale_image
from nodes import v3 as io


class UpscaleModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="UpscaleModelLoader", display_name="Load Upscale Model", category="loaders",
                         inputs=[io.Combo.Input("model_name", options=folders.get_filename_list("upscale_models"))],
                         outputs=[io.UpscaleModel.Output()])

    @classmethod
    def execute(cls, model_name):
        path = folders.get_full_path_or_raise("upscale_models", model_name)
        return io.NodeOutput(load_upscale_model(path))

    load_model = execute


class ImageUpscaleWithModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ImageUpscaleWithModel", display_name="Upscale Image (using Model)",
                         category="image/upscaling",
                         inputs=[io.UpscaleModel.Input("upscale_model"), io.Image.Input("image")],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, upscale_model, image):
        return io.NodeOutput(upscale_image(upscale_model, image))

    upscale = execute


V3_NODES = [UpscaleModelLoader, ImageUpscaleWithModel]
