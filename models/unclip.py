"""unCLIP and SDXL "revision" conditioning: CLIP-vision image embeddings, noise-augmented, as
the diffusion model's ADM input (SD2.1-unCLIP) or in place of SDXL's pooled text embedding
(COVERAGE.md §4.7).

The noise augmentor is ComfyUI's CLIPEmbeddingNoiseAugmentation without clip statistics
(mean 0, std 1, so its re-normalisation is the identity): a 1000-step squared-cosine
("squaredcos_cap_v2") schedule, q(z | x) = sqrt(abar_t) x + sqrt(1 - abar_t) eps, and a
sinusoidal embedding of the noise level t appended to z.

Seeding, which the outputs depend on: every (unCLIP entry, image) pair reseeds torch's global
CPU generator with `seed - 10` (the sampler's seed) and draws its eps from it, so they all get
the same eps; with more than one pair the strength-weighted sum is augmented once more at the
merge level, drawing from the global generator of the model's device without reseeding.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from models.unet import timestep_embedding

TIMESTEPS = 1000
SD21_MERGE_LEVEL = 0.05  # unclip_noise_augment_merge default for SD2.1-unCLIP; SDXL merges at 0


def squaredcos_cap_v2_betas(n: int = TIMESTEPS, max_beta: float = 0.999) -> np.ndarray:
    """The discretised cosine alpha-bar schedule (float64, as the original numpy code)."""
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)])


class EmbeddingNoiseAugmentor:
    """Noise augmentation of image embeddings of width `dim` (the timestep embedding has the same width)."""

    def __init__(self, dim: int, timesteps: int = TIMESTEPS):
        self.dim = dim
        self.max_noise_level = timesteps
        abar = np.cumprod(1.0 - squaredcos_cap_v2_betas(timesteps), axis=0)
        self.sqrt_abar = torch.tensor(np.sqrt(abar), dtype=torch.float32)
        self.sqrt_one_minus_abar = torch.tensor(np.sqrt(1.0 - abar), dtype=torch.float32)

    def level(self, amount: float) -> int:
        """noise_augmentation in 0..1 -> schedule step (Python's round, as ComfyUI)."""
        return round((self.max_noise_level - 1) * amount)

    def __call__(self, x: torch.Tensor, level: int, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(augmented x [1|B, dim], level embedding [1, dim]); x may be one embedding [dim]."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"image embeddings of width {x.shape[-1]} where this model takes {self.dim}")
        x = x.reshape(-1, self.dim)
        if seed is None:
            noise = torch.randn_like(x)
        else:  # reseeds the global CPU generator, which later unseeded draws continue from
            noise = torch.randn(x.size(), dtype=x.dtype, generator=torch.manual_seed(seed)).to(x.device)
        t = torch.tensor([level], device=x.device)
        a = self.sqrt_abar.to(x.device).gather(-1, t).reshape(1, 1)
        b = self.sqrt_one_minus_abar.to(x.device).gather(-1, t).reshape(1, 1)
        return a * x + b * noise, timestep_embedding(t, self.dim)


def unclip_adm(unclip_conditioning: list, device, augmentor: EmbeddingNoiseAugmentor,
               merge_level: float = 0.0, seed: int | None = None) -> torch.Tensor:
    """The [1, 2*dim] ADM vector of a conditioning's unclip_conditioning entries
    ({"clip_vision_output", "strength", "noise_augmentation"} each)."""
    parts = []
    for entry in unclip_conditioning:
        weight = entry["strength"]
        level = augmentor.level(entry["noise_augmentation"])
        for embeds in entry["clip_vision_output"].image_embeds:
            z, level_emb = augmentor(embeds.to(device), level, seed=seed)
            parts.append(torch.cat((z, level_emb), 1) * weight)
    if not parts:
        raise ValueError("unclip_conditioning holds no image embeddings")
    if len(parts) == 1:
        return parts[0]
    summed = torch.stack(parts).sum(0)
    z, level_emb = augmentor(summed[:, :augmentor.dim], augmentor.level(merge_level))
    return torch.cat((z, level_emb), 1)


def _seed(kw) -> int:
    return (kw.get("seed") or 0) - 10


def augmentor_of(model) -> EmbeddingNoiseAugmentor:
    """The DiffusionModel's augmentor (made once). Its width: half the ADM input for
    SD2.1-unCLIP (768 for -L, 1024 for -H), the pooled width for SDXL (1280) and the refiner."""
    aug = getattr(model, "_noise_augmentor", None)
    if aug is None:
        adm = model.diffusion_model.adm_in_channels
        size_numbers = {"sdxl": 6, "sdxl_refiner": 5}
        dim = adm - 256 * size_numbers[model.kind] if model.kind in size_numbers else adm // 2
        aug = model._noise_augmentor = EmbeddingNoiseAugmentor(dim)
    return aug


def sd21_unclip_adm(model, kw: dict) -> torch.Tensor:
    """SD2.1-unCLIP's ADM input: zeros without unCLIP entries."""
    device = kw["device"]
    entries = kw.get("unclip_conditioning")
    if entries is None:
        return torch.zeros((1, model.diffusion_model.adm_in_channels), device=device)
    return unclip_adm(entries, device, augmentor_of(model), kw.get("unclip_noise_augment_merge", SD21_MERGE_LEVEL),
                      _seed(kw))


def revision_pooled(model, kw: dict) -> torch.Tensor:
    """SDXL: the pooled text embedding replaced by the augmented image embeddings (ViT-bigG)."""
    aug = augmentor_of(model)
    try:
        adm = unclip_adm(kw["unclip_conditioning"], kw["device"], aug, seed=_seed(kw))
    except ValueError as e:
        raise ValueError(f"SDXL revision needs {aug.dim}-wide image embeddings (a CLIP ViT-bigG/14 vision "
                         f"model such as clip_vision_g): {e}") from e
    return adm[:, :aug.dim]
