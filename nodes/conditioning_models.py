"""Conditioning for models that take an image beside the prompt (V3): InstructPix2Pix's
encoded input image (comfy_extras.nodes_ip2p) and the SD 4x upscaler's low-resolution image
with its noise augmentation (comfy_extras.nodes_sdupscale)."""
from __future__ import annotations

import torch

from models.resize import common_upscale
from nodes import v3 as io
from nodes.conditioning import set_values

OUTPUTS = [io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative"),
           io.Latent.Output(display_name="latent")]


def crop_to_multiple_of_8(pixels: torch.Tensor) -> torch.Tensor:
    """Centre-crop an IMAGE [B,H,W,C] so H and W are multiples of 8 (the VAE's stride)."""
    h, w = (pixels.shape[1] // 8) * 8, (pixels.shape[2] // 8) * 8
    if (h, w) == tuple(pixels.shape[1:3]):
        return pixels
    top, left = (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2
    return pixels[:, top:top + h, left:left + w, :]


class InstructPixToPixConditioning(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_ip2p"

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="InstructPixToPixConditioning", category="conditioning/instructpix2pix",
                         inputs=[io.Conditioning.Input("positive"), io.Conditioning.Input("negative"),
                                 io.Vae.Input("vae"), io.Image.Input("pixels")],
                         outputs=OUTPUTS)

    @classmethod
    def execute(cls, positive, negative, pixels, vae):
        concat = vae.encode(crop_to_multiple_of_8(pixels))
        values = {"concat_latent_image": concat}
        # sampling starts from an empty latent; the image reaches the UNet through its concat channels
        return io.NodeOutput(set_values(positive, values), set_values(negative, values),
                             {"samples": torch.zeros_like(concat)})


class SD_4XUpscale_Conditioning(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_sdupscale"

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SD_4XUpscale_Conditioning", category="conditioning/upscale_diffusion",
                         inputs=[io.Image.Input("images"), io.Conditioning.Input("positive"),
                                 io.Conditioning.Input("negative"),
                                 io.Float.Input("scale_ratio", default=4.0, min=0.0, max=10.0, step=0.01),
                                 io.Float.Input("noise_augmentation", default=0.0, min=0.0, max=1.0, step=0.001)],
                         outputs=OUTPUTS)

    @classmethod
    def execute(cls, images, positive, negative, scale_ratio, noise_augmentation):
        width = max(1, round(images.shape[-2] * scale_ratio))
        height = max(1, round(images.shape[-3] * scale_ratio))
        # the upscaler's latent is 1/4 of the output size; its image input is at that size, in [-1, 1]
        low = common_upscale(images.movedim(-1, 1) * 2.0 - 1.0, width // 4, height // 4, "bilinear", "center")
        values = {"concat_image": low, "noise_augmentation": noise_augmentation}
        latent = torch.zeros([images.shape[0], 4, height // 4, width // 4])
        return io.NodeOutput(set_values(positive, values), set_values(negative, values), {"samples": latent})


V3_NODES = [InstructPixToPixConditioning, SD_4XUpscale_Conditioning]
