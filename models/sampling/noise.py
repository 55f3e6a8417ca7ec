"""Random numbers exactly as ComfyUI draws them (COVERAGE.md §2.5).

- Initial noise: the global CPU generator seeded with the seed, one float32 randn for the
  batch, or one [1,...] slice per index up to max(batch_index) when the latent carries one.
- Per-step noise of ancestral samplers: a generator on the sampling device seeded with
  the seed (+1 on the CPU), one randn(x.shape) per call.
- SDE samplers: a torchsde Brownian tree (entropy = seed) queried between two sigmas.
"""
from __future__ import annotations

import numpy as np
import torch


def initial_noise(latent: torch.Tensor, seed: int, batch_index=None) -> torch.Tensor:
    generator = torch.manual_seed(seed)
    if batch_index is None:
        return torch.randn(latent.size(), dtype=latent.dtype, layout=latent.layout,
                           generator=generator, device="cpu")
    unique, inverse = np.unique(batch_index, return_inverse=True)
    wanted = set(int(i) for i in unique)
    drawn = []
    for i in range(int(unique[-1]) + 1):
        slice_ = torch.randn([1] + list(latent.size())[1:], dtype=latent.dtype, layout=latent.layout,
                             generator=generator, device="cpu")
        if i in wanted:
            drawn.append(slice_)
    return torch.cat([drawn[i] for i in inverse], dim=0)


def default_noise_sampler(x: torch.Tensor, seed: int | None = None):
    """noise(sigma, sigma_next) -> a fresh standard normal tensor shaped like x."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(seed + 1 if x.device.type == "cpu" else seed)
    return lambda sigma, sigma_next: torch.randn(x.size(), dtype=x.dtype, layout=x.layout,
                                                 device=x.device, generator=generator)


class BrownianTreeNoise:
    """noise(sigma, sigma_next) = W(sigma, sigma_next) / sqrt(|sigma_next - sigma|) from one
    torchsde Brownian tree per seed, built on the CPU (`cpu=True`) or on x's device."""

    def __init__(self, x: torch.Tensor, sigma_min, sigma_max, seed=None, cpu: bool = True,
                 transform=lambda s: s):
        import torchsde  # imported lazily: only SDE samplers need it

        self.transform = transform
        self.cpu = cpu
        t0 = transform(torch.as_tensor(sigma_min))
        t1 = transform(torch.as_tensor(sigma_max))
        t0, t1, self.sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        # the tree lives on the host (cpu=True) or on x's device; its increments go to x's device
        self.anchor = x.new_empty(0)
        w0 = torch.zeros(x.shape, dtype=x.dtype) if cpu else torch.zeros_like(x)
        self.batched = isinstance(seed, (list, tuple))
        if seed is None:
            seeds = (torch.randint(0, 2 ** 63 - 1, ()).item(),)
        elif self.batched:
            if len(seed) != x.shape[0]:
                raise ValueError("a list of seeds needs one seed per batch item")
            seeds, w0 = tuple(seed), w0[0]
        else:
            seeds = (seed,)
        if cpu:
            t0, t1 = t0.detach().cpu(), t1.detach().cpu()
        self.trees = tuple(torchsde.BrownianTree(t0, w0, t1, entropy=s) for s in seeds)

    def _increment(self, a, b):
        # sigmas on the host (as the samplers pass them) cost no sync here: torchsde reads them as floats
        a, b, sign = (a, b, 1) if a < b else (b, a, -1)
        dtype = a.dtype
        if self.cpu:
            a, b = a.detach().cpu().float(), b.detach().cpu().float()
        w = torch.stack([tree(a, b) for tree in self.trees])
        if w.device != self.anchor.device:  # host tree: an asynchronous copy, no wait for the GPU
            w = self.anchor.new_empty(w.shape, dtype=dtype).copy_(w, non_blocking=True)
        w = w.to(dtype) * (self.sign * sign)
        return w if self.batched else w[0]

    def __call__(self, sigma, sigma_next):
        a = self.transform(torch.as_tensor(sigma))
        b = self.transform(torch.as_tensor(sigma_next))
        return self._increment(a, b) / (b - a).abs().sqrt()
