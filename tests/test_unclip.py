"""unCLIP / revision conditioning: the noise augmentor against a float64 schedule computed here,
its seeding (seed - 10 per entry, the merge continuing the global generator), SDXL's pooled
replacement inside the ADM vector and SD2.1-unCLIP's ADM input, on tiny checkpoints."""
import math
import os

import pytest
import torch

from models.checkpoint import load_checkpoint
from models.diffusion import sdxl_adm
from models.unclip import EmbeddingNoiseAugmentor, unclip_adm
from models.unet import timestep_embedding
from tiny_checkpoints import LAYOUT_DIR, tiny_checkpoint
from tiny_clip_vision import tiny_unclip_checkpoint

pytestmark = pytest.mark.skipif(not os.path.isdir(LAYOUT_DIR), reason="oracle layouts not available")
torch.set_num_threads(1)


def abar(t, n=1000):
    """alpha-bar of the squared-cosine schedule, betas capped at 0.999 (float64)."""
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    out = 1.0
    for i in range(t + 1):
        out *= 1 - min(1 - f((i + 1) / n) / f(i / n), 0.999)
    return out


class Vision:
    def __init__(self, embeds):
        self.image_embeds = embeds


def entry(embeds, strength=1.0, aug=0.0):
    return {"clip_vision_output": Vision(embeds), "strength": strength, "noise_augmentation": aug}


def test_single_entry_adds_seeded_noise_even_at_level_zero():
    aug = EmbeddingNoiseAugmentor(16)
    e = torch.randn(1, 16, generator=torch.Generator().manual_seed(0))
    out = unclip_adm([entry(e, 0.75, 0.0)], "cpu", aug, seed=90)
    eps = torch.randn(1, 16, generator=torch.Generator().manual_seed(90))
    a0 = abar(0)
    expect = torch.cat([math.sqrt(a0) * e + math.sqrt(1 - a0) * eps, timestep_embedding(torch.tensor([0]), 16)], 1)
    torch.testing.assert_close(out, expect * 0.75, rtol=1e-6, atol=1e-7)
    assert not torch.equal(out[:, :16], e * 0.75)  # level 0 still moves the embedding


@pytest.mark.parametrize("amount", [0.1, 0.5, 1.0])
def test_noise_level_from_augmentation_amount(amount):
    aug = EmbeddingNoiseAugmentor(8)
    level = round(999 * amount)
    e = torch.randn(1, 8)
    out = unclip_adm([entry(e, 1.0, amount)], "cpu", aug, seed=5)
    eps = torch.randn(1, 8, generator=torch.Generator().manual_seed(5))
    a = abar(level)
    torch.testing.assert_close(out[:, :8], math.sqrt(a) * e + math.sqrt(1 - a) * eps, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[:, 8:], timestep_embedding(torch.tensor([level]), 8))


def test_two_entries_reseed_each_then_merge_continues_the_global_generator():
    aug = EmbeddingNoiseAugmentor(12)
    g = torch.Generator().manual_seed(3)
    e1, e2 = torch.randn(1, 12, generator=g), torch.randn(1, 12, generator=g)
    seed = 764714814161513 - 10
    out = unclip_adm([entry(e1, 1.0), entry(e2, 0.75)], "cpu", aug, seed=seed)
    after = torch.randn(3)  # the caller's next global draw
    # the same draws, written out
    torch.manual_seed(seed)
    eps1 = torch.randn(1, 12)
    torch.manual_seed(seed)
    eps2 = torch.randn(1, 12)
    eps_merge = torch.randn(1, 12)
    expected_after = torch.randn(3)
    a0, emb0 = abar(0), timestep_embedding(torch.tensor([0]), 12)
    z1 = math.sqrt(a0) * e1 + math.sqrt(1 - a0) * eps1
    z2 = math.sqrt(a0) * e2 + math.sqrt(1 - a0) * eps2
    summed = z1 * 1.0 + z2 * 0.75
    merged = math.sqrt(a0) * summed + math.sqrt(1 - a0) * eps_merge
    torch.testing.assert_close(out, torch.cat([merged, emb0], 1), rtol=1e-5, atol=1e-6)
    assert torch.equal(after, expected_after)
    assert torch.equal(eps1, eps2)


def test_batched_image_embeds_count_as_separate_entries():
    aug = EmbeddingNoiseAugmentor(8)
    batch = torch.randn(2, 8)
    one = unclip_adm([entry(batch, 0.5)], "cpu", aug, seed=1)
    two = unclip_adm([entry(batch[:1], 0.5), entry(batch[1:], 0.5)], "cpu", aug, seed=1)
    assert one.shape == (1, 16)
    torch.testing.assert_close(one, two)


def test_width_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="width 8 where this model takes 12"):
        unclip_adm([entry(torch.randn(1, 8))], "cpu", EmbeddingNoiseAugmentor(12), seed=0)


@pytest.fixture(scope="module")
def sdxl():
    return load_checkpoint(tiny_checkpoint("sdxl", seed=1), output_vae=False, output_clip=False).model


def test_sdxl_revision_replaces_only_the_pooled_part(sdxl):
    pooled = torch.randn(1, 80)
    e1, e2 = torch.randn(1, 80), torch.randn(1, 80)
    kw = dict(pooled_output=pooled, device="cpu", width=1024, height=768, seed=42)
    plain = sdxl.extra_conds(**kw)["y"].cond
    torch.testing.assert_close(plain, sdxl_adm(pooled, 1024, 768))
    entries = [entry(e1, 1.0), entry(e2, 0.75)]
    revised = sdxl.extra_conds(**kw, unclip_conditioning=entries)["y"].cond
    expect = unclip_adm(entries, "cpu", EmbeddingNoiseAugmentor(80), merge_level=0.0, seed=32)[:, :80]
    assert revised.shape == plain.shape == (1, 80 + 6 * 256)
    torch.testing.assert_close(revised[:, :80], expect)
    torch.testing.assert_close(revised[:, 80:], plain[:, 80:])
    assert not torch.allclose(revised[:, :80], pooled)
    with pytest.raises(ValueError, match="ViT-bigG"):
        sdxl.extra_conds(**kw, unclip_conditioning=[entry(torch.randn(1, 64))])


def test_sd21_unclip_checkpoint_adm_input():
    loaded = load_checkpoint(tiny_unclip_checkpoint(seed=2), output_vae=False, output_clip=False)
    model = loaded.model
    assert loaded.detection.family == "sd21_unclip" and model.diffusion_model.adm_in_channels == 128
    noise = torch.zeros(1, 4, 8, 8)
    none = model.extra_conds(device="cpu", noise=noise, seed=7)["y"].cond
    assert torch.equal(none, torch.zeros(1, 128))
    e1, e2 = torch.randn(1, 64), torch.randn(1, 64)
    entries = [entry(e1, 1.0, 0.1), entry(e2, 0.5, 0.0)]
    y = model.extra_conds(device="cpu", noise=noise, seed=7, unclip_conditioning=entries)["y"].cond
    # SD2.1-unCLIP merges at level 0.05 by default (round(999 * 0.05) = 50)
    torch.testing.assert_close(y, unclip_adm(entries, "cpu", EmbeddingNoiseAugmentor(64), 0.05, seed=-3))
    torch.testing.assert_close(y[:, 64:], timestep_embedding(torch.tensor([50]), 64))
    # and the UNet runs with it
    x = torch.randn(1, 4, 8, 8)
    out = model.apply_model(x, torch.tensor([5.0]), c_crossattn=torch.randn(1, 77, 64), y=y)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_entry_noise_comes_from_the_cpu_generator():
    aug = EmbeddingNoiseAugmentor(16)
    e = torch.randn(1, 16)
    cpu = unclip_adm([entry(e, 0.5, 0.2)], "cpu", aug, seed=33)
    gpu = unclip_adm([entry(e, 0.5, 0.2)], "cuda", aug, seed=33)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)
    merged = unclip_adm([entry(e), entry(e)], "cuda", aug, seed=33)  # merge draws on the device
    assert merged.device.type == "cuda" and torch.isfinite(merged).all()
