"""VAE nodes: VAELoader, VAEDecode, VAEEncode, their tiled versions and VAEEncodeForInpaint
(ComfyUI's inputs, defaults and arithmetic)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from models import folders, placement
from models.checkpoint import load_vae
from models.vae import PixelSpaceVAE

TAE_NAMES = ["taesd", "taesdxl", "taesd3", "taef1"]


class VAELoader:
    @staticmethod
    def vae_list(cls=None) -> list:
        names = list(folders.get_filename_list("vae"))
        approx = folders.get_filename_list("vae_approx")
        for tae in TAE_NAMES:  # offered when both halves are in vae_approx
            if any(a.startswith(tae + "_encoder.") for a in approx) and any(a.startswith(tae + "_decoder.") for a in approx):
                names.append(tae)
        names.append("pixel_space")
        return names

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae_name": (cls.vae_list(cls),)}}

    RETURN_TYPES = ("VAE",)
    FUNCTION = "load_vae"
    CATEGORY = "loaders"

    def load_vae(self, vae_name):
        if vae_name == "pixel_space":
            return (PixelSpaceVAE(),)
        if vae_name in TAE_NAMES:
            raise ValueError(f"{vae_name} (tiny autoencoder) can be used for previews but not yet as a VAE")
        path = folders.get_full_path_or_raise("vae", vae_name)
        from nodes.checkpoint_loaders import stored_weight_dtype
        stored = stored_weight_dtype(path, prefix="")
        return (placement.place_vae(load_vae(path, dtype=stored), stored),)


class VAEDecode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT", {"tooltip": "The latent to be decoded."}),
                             "vae": ("VAE", {"tooltip": "The VAE model used for decoding the latent."})}}

    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The decoded image.",)
    FUNCTION = "decode"
    CATEGORY = "latent"
    DESCRIPTION = "Decodes latent images back into pixel space images."

    def decode(self, vae, samples):
        latent = samples["samples"]
        if latent.is_nested:
            latent = latent.unbind()[0]
        images = vae.decode(latent)
        if images.ndim == 5:  # combine batches
            images = images.reshape(-1, *images.shape[-3:])
        return (images,)


class VAEDecodeTiled:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "samples": ("LATENT",), "vae": ("VAE",),
            "tile_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 32}),
            "overlap": ("INT", {"default": 64, "min": 0, "max": 4096, "step": 32}),
            "temporal_size": ("INT", {"default": 64, "min": 8, "max": 4096, "step": 4,
                                      "tooltip": "Only used for video VAEs: Amount of frames to decode at a time."}),
            "temporal_overlap": ("INT", {"default": 8, "min": 4, "max": 4096, "step": 4,
                                         "tooltip": "Only used for video VAEs: Amount of frames to overlap."}),
        }}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"
    CATEGORY = "_for_testing"

    def decode(self, vae, samples, tile_size, overlap=64, temporal_size=64, temporal_overlap=8):
        if tile_size < overlap * 4:
            overlap = tile_size // 4
        ratio = vae.spacial_compression_decode()
        images = vae.decode_tiled(samples["samples"], tile_x=tile_size // ratio, tile_y=tile_size // ratio,
                                  overlap=overlap // ratio)
        if images.ndim == 5:
            images = images.reshape(-1, *images.shape[-3:])
        return (images,)


class VAEEncode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"pixels": ("IMAGE",), "vae": ("VAE",)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"
    CATEGORY = "latent"

    def encode(self, vae, pixels):
        return ({"samples": vae.encode(pixels)},)


class VAEEncodeTiled:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pixels": ("IMAGE",), "vae": ("VAE",),
            "tile_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 64}),
            "overlap": ("INT", {"default": 64, "min": 0, "max": 4096, "step": 32}),
            "temporal_size": ("INT", {"default": 64, "min": 8, "max": 4096, "step": 4,
                                      "tooltip": "Only used for video VAEs: Amount of frames to encode at a time."}),
            "temporal_overlap": ("INT", {"default": 8, "min": 4, "max": 4096, "step": 4,
                                         "tooltip": "Only used for video VAEs: Amount of frames to overlap."}),
        }}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"
    CATEGORY = "_for_testing"

    def encode(self, vae, pixels, tile_size, overlap, temporal_size=64, temporal_overlap=8):
        return ({"samples": vae.encode_tiled(pixels, tile_x=tile_size, tile_y=tile_size, overlap=overlap)},)


class VAEEncodeForInpaint:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"pixels": ("IMAGE",), "vae": ("VAE",), "mask": ("MASK",),
                             "grow_mask_by": ("INT", {"default": 6, "min": 0, "max": 64, "step": 1})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"
    CATEGORY = "latent/inpaint"

    def encode(self, vae, pixels, mask, grow_mask_by=6):
        r = vae.downscale_ratio
        h, w = (pixels.shape[1] // r) * r, (pixels.shape[2] // r) * r
        mask = F.interpolate(mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])),
                             size=(pixels.shape[1], pixels.shape[2]), mode="bilinear")
        pixels = pixels.clone()
        if pixels.shape[1] != h or pixels.shape[2] != w:  # centre crop to the VAE's grid
            dy, dx = (pixels.shape[1] % r) // 2, (pixels.shape[2] % r) // 2
            pixels = pixels[:, dy:h + dy, dx:w + dx, :]
            mask = mask[:, :, dy:h + dy, dx:w + dx]
        if grow_mask_by == 0:
            grown = mask
        else:  # grow the mask a little so the latent-space seam is covered
            kernel = torch.ones((1, 1, grow_mask_by, grow_mask_by))
            grown = torch.clamp(F.conv2d(mask.round(), kernel, padding=math.ceil((grow_mask_by - 1) / 2)), 0, 1)
        keep = (1.0 - mask.round()).squeeze(1)
        for c in range(3):  # masked pixels become mid-grey
            pixels[:, :, :, c] -= 0.5
            pixels[:, :, :, c] *= keep
            pixels[:, :, :, c] += 0.5
        latent = vae.encode(pixels)
        return ({"samples": latent, "noise_mask": grown[:, :, :h, :w].round()},)


NODE_CLASS_MAPPINGS = {
    "VAELoader": VAELoader,
    "VAEDecode": VAEDecode,
    "VAEEncode": VAEEncode,
    "VAEDecodeTiled": VAEDecodeTiled,
    "VAEEncodeTiled": VAEEncodeTiled,
    "VAEEncodeForInpaint": VAEEncodeForInpaint,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "VAELoader": "Load VAE",
    "VAEDecode": "VAE Decode",
    "VAEEncode": "VAE Encode",
    "VAEDecodeTiled": "VAE Decode (Tiled)",
    "VAEEncodeTiled": "VAE Encode (Tiled)",
    "VAEEncodeForInpaint": "VAE Encode (for Inpainting)",
}
