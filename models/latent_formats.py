"""Latent spaces of the model families: the scale applied around sampling, the channel
count, and the linear latent -> RGB factors used for cheap previews."""
from __future__ import annotations

import torch


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


class SDXLPlayground25(LatentFormat):
    """Playground v2.5: SDXL's VAE with per-channel mean/std normalisation, then scale 0.5."""
    scale_factor = 0.5
    latents_mean = (-1.6574, 1.886, -1.383, 2.5155)
    latents_std = (8.4927, 5.9022, 6.5498, 5.2299)
    latent_rgb_factors = [
        [0.3920, 0.4054, 0.4549],
        [-0.2634, -0.0196, 0.0653],
        [0.0568, 0.1687, -0.0755],
        [-0.3112, -0.2359, -0.2076],
    ]
    taesd_decoder_name = "taesdxl_decoder"

    def _stats(self, latent):
        shape = (1, len(self.latents_mean), 1, 1)
        mean = torch.tensor(self.latents_mean, device=latent.device, dtype=latent.dtype).view(shape)
        std = torch.tensor(self.latents_std, device=latent.device, dtype=latent.dtype).view(shape)
        return mean, std

    def process_in(self, latent):
        mean, std = self._stats(latent)
        return (latent - mean) * self.scale_factor / std

    def process_out(self, latent):
        mean, std = self._stats(latent)
        return latent * std / self.scale_factor + mean
