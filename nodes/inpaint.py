"""InpaintModelConditioning: inpainting through the conditioning, so any model (9-channel
inpainting UNets through their concat channels, others through the latent noise mask) gets
the masked image and the mask."""
from __future__ import annotations

import torch.nn.functional as F

from nodes.conditioning import set_values


def grey_out_masked(pixels, mask):
    """Pixels cropped to a multiple of 8 (centred, as VAEEncodeForInpaint) with the masked
    region set to mid-grey, and the mask cropped alike. mask: [B,1,H,W] at the pixels' size."""
    h, w = (pixels.shape[1] // 8) * 8, (pixels.shape[2] // 8) * 8
    pixels = pixels.clone()
    if (h, w) != tuple(pixels.shape[1:3]):
        top, left = (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2
        pixels = pixels[:, top:top + h, left:left + w, :]
        mask = mask[:, :, top:top + h, left:left + w]
    keep = (1.0 - mask.round()).squeeze(1)
    pixels[..., :3] = (pixels[..., :3] - 0.5) * keep.unsqueeze(-1) + 0.5
    return pixels, mask


class InpaintModelConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "positive": ("CONDITIONING",), "negative": ("CONDITIONING",), "vae": ("VAE",),
            "pixels": ("IMAGE",), "mask": ("MASK",),
            "noise_mask": ("BOOLEAN", {"default": True, "tooltip": (
                "Add a noise mask to the latent so sampling will only happen within the mask. Might improve "
                "results or completely break things depending on the model.")})}}

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    FUNCTION = "encode"
    CATEGORY = "conditioning/inpaint"

    def encode(self, positive, negative, pixels, vae, mask, noise_mask=True):
        mask = F.interpolate(mask.reshape((-1, 1) + tuple(mask.shape[-2:])), size=tuple(pixels.shape[1:3]),
                             mode="bilinear")
        greyed, mask = grey_out_masked(pixels, mask)
        concat_latent = vae.encode(greyed)
        latent = {"samples": vae.encode(pixels)}  # the whole original image, uncropped
        if noise_mask:
            latent["noise_mask"] = mask
        values = {"concat_latent_image": concat_latent, "concat_mask": mask}
        return set_values(positive, values), set_values(negative, values), latent


NODE_CLASS_MAPPINGS = {"InpaintModelConditioning": InpaintModelConditioning}
