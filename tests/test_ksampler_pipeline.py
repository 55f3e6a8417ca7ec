"""The KSampler pipeline on a model whose answers are known exactly.

The fake model is an ideal denoiser for data ~ N(mu, S^2) where mu is read from the
conditioning's cross-attention tensor (its mean). So CFG, areas, masks, timestep ranges
and inpainting each have a predictable effect on the sampled latent.
"""
import torch

from models.sampling import ksampler
from models.sampling.conds import CondCrossAttn
from models.sampling.model_sampling import DiscreteSchedule

S = 0.5


class IdentityLatent:
    latent_channels = 4

    def process_in(self, x):
        return x

    def process_out(self, x):
        return x


class FakeDiffusionModel:
    def __init__(self):
        self.model_sampling = DiscreteSchedule()
        self.latent_format = IdentityLatent()
        self.batch_sizes = []

    def extra_conds(self, cross_attn=None, **kwargs):
        return {"c_crossattn": CondCrossAttn(cross_attn)}

    def apply_model(self, x, sigma, c_crossattn=None, transformer_options=None, **kwargs):
        self.batch_sizes.append(x.shape[0])
        mu = c_crossattn.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        sig = sigma.view(-1, 1, 1, 1)
        return (x * S ** 2 + mu * sig ** 2) / (S ** 2 + sig ** 2)


class FakePatcher:
    def __init__(self):
        self.model = FakeDiffusionModel()
        self.model_options = {}
        self.load_device = torch.device("cpu")


def cond(mu, tokens=77, **options):
    return [[torch.full((1, tokens, 8), float(mu)), options]]


def run(patcher, positive, negative, cfg=7.0, steps=30, latent=None, sampler="dpmpp_2m", **kw):
    latent = torch.zeros(1, 4, 16, 16) if latent is None else latent
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(1))
    return ksampler.sample(patcher, noise, steps, cfg, sampler, "karras", positive, negative, latent, seed=1, **kw)


def exact_ode_result(mu, shape=(1, 4, 16, 16)):
    """Where the probability-flow ODE takes the starting noise for data mean mu."""
    sigma0 = DiscreteSchedule().sigma_max
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    x0 = noise * (1 + sigma0 ** 2) ** 0.5
    return mu + (x0 - mu) * S / (S ** 2 + sigma0 ** 2) ** 0.5


def test_cfg_mixes_cond_and_uncond():
    p = FakePatcher()
    out = run(p, cond(1.0), cond(0.2), cfg=3.0, steps=100)
    # guidance of two Gaussian denoisers is the denoiser of mean uncond + cfg * (cond - uncond)
    torch.testing.assert_close(out, exact_ode_result(0.2 + 3.0 * (1.0 - 0.2)), atol=5e-3, rtol=0)
    # cond and uncond went through the model together
    assert set(p.model.batch_sizes) == {2}


def test_cfg_one_skips_the_uncond_pass():
    p = FakePatcher()
    out = run(p, cond(0.6), cond(5.0), cfg=1.0)
    assert abs(float(out.mean()) - 0.6) < 0.05
    assert set(p.model.batch_sizes) == {1}


def test_area_conditioning_applies_to_its_region_only():
    p = FakePatcher()
    positive = cond(0.0) + cond(2.0, area=(16, 8, 0, 8), strength=1.0)  # right half (h=16, w=8, y=0, x=8)
    out = run(p, positive, cond(0.0), cfg=1.0)
    left = out[..., :, :4].mean()   # away from the feathered seam
    right = out[..., :, 12:].mean()
    assert abs(float(left) - 0.0) < 0.1
    assert abs(float(right) - 1.0) < 0.1  # averaged with the full-frame cond: (0 + 2) / 2


def test_mask_conditioning_with_strength():
    p = FakePatcher()
    mask = torch.zeros(1, 16, 16)
    mask[:, 8:, :] = 1.0
    positive = cond(0.0) + cond(3.0, mask=mask, mask_strength=1.0, strength=2.0)
    out = run(p, positive, cond(0.0), cfg=1.0)
    bottom = out[..., 8:, :].mean()
    # weights 1 (plain) and 2 (masked): (0*1 + 3*2) / 3 = 2
    assert abs(float(bottom) - 2.0) < 0.1
    assert abs(float(out[..., :8, :].mean())) < 0.1


def test_timestep_range_limits_a_conditioning():
    alone = run(FakePatcher(), cond(4.0), cond(0.0), cfg=1.0)
    both = run(FakePatcher(), cond(4.0) + cond(-4.0), cond(0.0), cfg=1.0)
    never = run(FakePatcher(), cond(4.0) + cond(-4.0, start_percent=1.0, end_percent=1.0), cond(0.0), cfg=1.0)
    early = run(FakePatcher(), cond(4.0) + cond(-4.0, start_percent=0.0, end_percent=0.5), cond(0.0), cfg=1.0)
    torch.testing.assert_close(never, alone)  # a range that never covers a sampled sigma does nothing
    assert float(both.mean()) < float(early.mean()) < float(alone.mean())  # half the schedule: part of the pull


def test_noise_mask_keeps_the_unmasked_latent():
    p = FakePatcher()
    latent = torch.full((1, 4, 16, 16), 0.3)
    mask = torch.zeros(1, 16, 16)
    mask[:, :, :8] = 1.0
    out = run(p, cond(2.0), cond(2.0), cfg=1.0, latent=latent, noise_mask=mask)
    torch.testing.assert_close(out[..., 8:], latent[..., 8:])
    assert abs(float(out[..., :6].mean()) - 2.0) < 0.1


def test_denoise_and_advanced_window():
    p = FakePatcher()
    latent = torch.full((1, 4, 16, 16), 0.3)
    unchanged = run(p, cond(2.0), cond(2.0), latent=latent, start_step=30, last_step=10000)
    assert torch.equal(unchanged, latent)
    partial = ksampler.sample(p, torch.zeros_like(latent), 10, 1.0, "euler", "normal", cond(2.0), cond(2.0),
                              latent, denoise=0.3, seed=0)
    # a light denoise of a noiseless latent moves it only part of the way to the data mean
    assert 0.3 < float(partial.mean()) < 2.0


def test_step_callback_reports_progress():
    p = FakePatcher()
    seen = []
    run(p, cond(1.0), cond(0.0), steps=6, callback=lambda i, x0, x, total: seen.append((i, total)))
    assert seen == [(i, 6) for i in range(6)]


def test_ksampler_node_uses_comfyui_noise_and_reports_progress():
    import nodes  # noqa: F401  (registers built-in nodes)
    from models import progress
    from models.latent_formats import SD15
    from nodes.registry import NODE_CLASS_MAPPINGS
    p = FakePatcher()
    p.model.latent_format = SD15()
    seen = []
    progress.set_progress_hook(lambda value, total, preview, node: seen.append((value, total)))
    try:
        latent = {"samples": torch.zeros(1, 4, 8, 8)}
        (out,) = NODE_CLASS_MAPPINGS["KSampler"]().sample(p, 42, 5, 1.0, "euler", "normal", cond(1.0), cond(0.0),
                                                          latent, 1.0)
    finally:
        progress.set_progress_hook(None)
    assert seen == [(i, 5) for i in range(1, 6)]
    assert out["samples"].shape == (1, 4, 8, 8)
    # KSamplerAdvanced with add_noise disabled and nothing to do returns the latent unchanged
    adv = NODE_CLASS_MAPPINGS["KSamplerAdvanced"]()
    (same,) = adv.sample(p, "disable", 0, 5, 1.0, "euler", "normal", cond(1.0), cond(0.0), out, 5, 10000, "enable")
    assert torch.equal(same["samples"], out["samples"])
