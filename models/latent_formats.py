"""Latent spaces of the model families: the scale applied around sampling, the channel
count, and the linear latent -> RGB factors used for cheap previews."""
from __future__ import annotations


class LatentFormat:
    scale_factor = 1.0
    latent_channels = 4
    latent_dimensions = 2
    latent_rgb_factors: list | None = None
    latent_rgb_factors_bias: list | None = None
    taesd_decoder_name: str | None = None

    def process_in(self, latent):
        return latent * self.scale_factor

    def process_out(self, latent):
        return latent / self.scale_factor


class SD15(LatentFormat):
    """SD1.x and SD2.x."""
    scale_factor = 0.18215
    latent_rgb_factors = [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ]
    taesd_decoder_name = "taesd_decoder"


class SDXL(LatentFormat):
    scale_factor = 0.13025
    latent_rgb_factors = [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ]
    latent_rgb_factors_bias = [0.1084, -0.0175, -0.0011]
    taesd_decoder_name = "taesdxl_decoder"
