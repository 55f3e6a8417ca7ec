"""The memory manager's decisions under a fake device budget (models/memory.py): models kept
while they fit, least-recently-used eviction, partial (streamed) loading for --lowvram and
--novram, outputs unchanged by offload/reload, the VAE's tiled fallback and the sampler's
out-of-memory retry, and compat.comfy.model_management delegating to it."""
import gc

import pytest
import torch
from torch import nn

from models import devices, memory, ops
from models.devices import FakeDevice
from server import cli

MB = 1024 * 1024


@pytest.fixture(autouse=True)
def restore_runtime():
    yield
    devices.configure(cli.parse_args(["--cpu"]))
    memory.reset()


def fake(room_mb: float, *flags) -> FakeDevice:
    """A managed device with `room_mb` MB above the minimum inference memory (reserve 0)."""
    args = cli.parse_args(["--reserve-vram", "0", *flags])
    dev = FakeDevice(devices.INFERENCE_MINIMUM + int(room_mb * MB))
    devices.configure(args, device=dev)
    memory.reset()
    return dev


def tiny_model(seed: int, width=256, depth=4) -> nn.Module:
    """~width*width*4 bytes per layer (256 -> 0.25 MB), all in ops layers (streamable)."""
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        layers += [ops.Linear(width, width), ops.LayerNorm(width)]
    return nn.Sequential(*layers).requires_grad_(False)


def size_mb(m) -> float:
    return memory.module_size(m) / MB


def resident(m) -> int:
    e = memory.manager().entries.get((id(m),))
    return 0 if e is None else e.resident


def test_models_stay_loaded_while_they_fit_and_lru_is_evicted():
    a, b, c = tiny_model(1), tiny_model(2), tiny_model(3)
    one = size_mb(a)
    dev = fake(one * 2.5)  # room for two models, not three
    mgr = memory.manager()
    mgr.load([a])
    mgr.load([b])
    assert resident(a) == resident(b) == memory.module_size(a) and dev.resident == 2 * memory.module_size(a)
    mgr.load([a])  # a is now the most recently used
    mgr.events.clear()
    mgr.load([c])
    assert mgr.events == [("unload", "Sequential"), ("load", "Sequential")]
    assert resident(b) == 0 and resident(a) > 0 and resident(c) > 0  # b, the LRU one, made room
    mgr.load([b])
    assert resident(a) == 0 and resident(b) > 0 and resident(c) > 0  # then a was the oldest
    assert [e.refs[0]() for e in mgr.loaded()] == [b, c]  # most recently used first
    assert dev.resident == 2 * memory.module_size(a) and dev.free_memory() >= 0


def test_models_requested_together_are_never_evicted_for_each_other():
    a, b, c = tiny_model(1), tiny_model(2), tiny_model(3)
    fake(size_mb(a) * 2.5)
    mgr = memory.manager()
    mgr.load([c])
    mgr.load([a, b])  # c goes; a and b both stay even though they are loaded in one call
    assert resident(c) == 0 and resident(a) > 0 and resident(b) > 0


def test_outputs_unchanged_by_offload_and_reload():
    a, b = tiny_model(1), tiny_model(2)
    fake(size_mb(a) * 1.5)  # one at a time
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(0))
    mgr = memory.manager()
    mgr.load([a])
    before = a(x)
    mgr.load([b])  # a offloaded
    assert resident(a) == 0
    mgr.load([a])  # and back
    assert resident(a) == memory.module_size(a)
    torch.testing.assert_close(a(x), before, rtol=0, atol=0)


def test_partial_load_when_a_model_does_not_fit():
    a = tiny_model(1, depth=8)
    dev = fake(size_mb(a) * 0.5)
    e = memory.manager().load([a])[0]
    assert memory.manager().events[-1] == ("partial", "Sequential")
    assert 0 < e.resident < e.size and e.resident <= dev.budget
    x = torch.randn(2, 256)
    want = tiny_model(1, depth=8)(x)
    torch.testing.assert_close(a(x), want, rtol=0, atol=0)


def test_novram_streams_every_layer_and_highvram_loads_whole():
    a = tiny_model(1)
    fake(size_mb(a) * 10, "--novram")
    assert memory.manager().load([a])[0].resident == 0
    fake(size_mb(a) * 0.1, "--highvram")
    e = memory.manager().load([a])[0]
    assert e.resident == e.size  # --highvram: whole, whatever the estimate says


def test_lowvram_gives_the_same_images_as_normal(tmp_path):
    """A tiny SD1 text-to-image run with everything resident, then with the UNet streamed
    layer by layer (--novram) and partially resident (--lowvram on a small budget)."""
    from tests.tiny_checkpoints import write_tiny_checkpoint
    path = write_tiny_checkpoint(str(tmp_path / "sd1.safetensors"), "sd1", seed=3)

    def run():
        from nodes.checkpoint_loaders import load_checkpoint_parts
        from models.sampling.ksampler import sample
        patcher, clip, vae = load_checkpoint_parts(path)
        pos = clip.encode_from_tokens_scheduled(clip.tokenize("a red cat"))
        neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
        noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
        out = sample(patcher, noise, 3, 7.0, "euler", "normal", pos, neg, torch.zeros(1, 4, 8, 8))
        unet = next(e for e in memory.manager().entries.values() if e.name == "DiffusionModel")
        placed = (unet.resident, unet.size)  # before the VAE decode, which may evict the UNet
        return out, vae.decode(out), placed, memory.manager().entries

    fake(1000)
    latent, image, _, entries = run()
    assert all(e.fully_loaded for e in entries.values()) and len(entries) == 3  # UNet, CLIP, VAE
    fake(1000, "--novram")
    latent2, image2, (unet_resident, _), _ = run()
    assert unet_resident == 0
    torch.testing.assert_close(latent2, latent, rtol=0, atol=0)
    torch.testing.assert_close(image2, image, rtol=0, atol=0)
    fake(0.3, "--lowvram")
    latent3, _, (unet_resident, unet_size), _ = run()
    assert 0 < unet_resident < unet_size
    torch.testing.assert_close(latent3, latent, rtol=0, atol=0)


def test_clones_share_one_entry_and_dead_models_are_forgotten():
    from models.model_patcher import ModelPatcher

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.diffusion_model = tiny_model(4)

    dev = fake(10)
    p = ModelPatcher(Model())
    memory.manager().load([p, p.clone()])
    assert len(memory.manager().entries) == 1 and dev.resident == memory.module_size(p.model)
    del p
    gc.collect()
    assert memory.manager().loaded() == [] and dev.resident == 0


def test_unload_all_and_compat_functions_delegate():
    import comfy.model_management as mm
    a, b = tiny_model(1), tiny_model(2)
    dev = fake(10)
    mm.load_models_gpu([a, b])
    assert len(mm.loaded_models()) == 2 and mm.get_free_memory(mm.get_torch_device()) == dev.free_memory()
    freed = mm.free_memory(dev.budget, mm.get_torch_device(), keep_loaded=[b])
    assert [e.refs[0]() for e in freed] == [a] and resident(b) > 0
    mm.unload_all_models()
    assert dev.resident == 0 and mm.loaded_models() == [] and dev.empty_cache_calls >= 1
    assert mm.module_size(a) == memory.module_size(a)


def test_vae_out_of_memory_falls_back_to_tiles(monkeypatch):
    from tests.test_dtype_policy import _tiny_vae
    fake(100)
    vae = _tiny_vae()
    latent = torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(2))
    pixels = torch.rand(1, 96, 96, 3, generator=torch.Generator().manual_seed(3))
    want_img, want_lat = vae.decode_tiled(latent, 16, 16, 4), vae.encode_tiled(pixels, 64, 64, 8)
    real_decode, real_encode = vae.first_stage_model.decode, vae.first_stage_model.encode

    def small_only(fn, limit, times=1000):
        left = {"n": times}

        def run(x):
            if x.shape[-1] * x.shape[-2] > limit and left["n"]:
                left["n"] -= 1
                raise torch.OutOfMemoryError("CUDA out of memory (fake)")
            return fn(x)
        return run
    monkeypatch.setattr(vae.first_stage_model, "decode", small_only(real_decode, 32 * 32))
    monkeypatch.setattr(vae.first_stage_model, "encode", small_only(real_encode, 128 * 128))
    torch.testing.assert_close(vae.decode(latent), vae.decode_tiled(latent))  # the default tiles
    monkeypatch.setattr(vae.first_stage_model, "decode", real_decode)
    assert vae.decode(latent).shape == want_img.shape
    assert vae.encode(pixels).shape == want_lat.shape  # 96x96 fits the encode limit: no tiles
    monkeypatch.setattr(vae.first_stage_model, "encode", small_only(real_encode, 40 * 40, times=1))
    torch.testing.assert_close(vae.encode(pixels), vae.encode_tiled(pixels))  # default tiles hold 96x96


def _sd1_parts(tmp_path):
    from tests.tiny_checkpoints import write_tiny_checkpoint
    from nodes.checkpoint_loaders import load_checkpoint_parts
    path = write_tiny_checkpoint(str(tmp_path / "sd1.safetensors"), "sd1", seed=3)
    patcher, clip, vae = load_checkpoint_parts(path)
    pos = clip.encode_from_tokens_scheduled(clip.tokenize("a cat"))
    neg = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    return patcher, clip, vae, pos, neg


def test_sampling_out_of_memory_frees_other_models_and_retries_once(tmp_path, monkeypatch):
    from models.sampling.ksampler import sample
    fake(1000)
    patcher, clip, vae, pos, neg = _sd1_parts(tmp_path)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    want = sample(patcher, noise, 2, 5.0, "euler", "normal", pos, neg, torch.zeros(1, 4, 8, 8))
    memory.manager().load([vae])
    unet = patcher.model.diffusion_model
    real = unet.forward
    failures = {"left": 1}

    def flaky(*a, **kw):
        if failures["left"]:
            failures["left"] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB (fake)")
        return real(*a, **kw)
    monkeypatch.setattr(unet, "forward", flaky)
    got = sample(patcher, noise, 2, 5.0, "euler", "normal", pos, neg, torch.zeros(1, 4, 8, 8))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not memory.manager().is_loaded(vae) and not memory.manager().is_loaded(clip)  # freed for the retry
    assert memory.manager().is_loaded(patcher)

    failures["left"] = 2  # fails again after the retry: a clear error, still an OOM for callers
    with pytest.raises(torch.OutOfMemoryError, match="out of memory while sampling a 1x4x8x8 latent.*--lowvram"):
        sample(patcher, noise, 2, 5.0, "euler", "normal", pos, neg, torch.zeros(1, 4, 8, 8))


def test_upscale_models_and_clip_vision_are_managed_like_the_other_models():
    """They run on the compute device, stay there while they fit, and are the LRU victims like
    any model (they used to be moved by hand, outside the manager's budget)."""
    from models import placement
    from models.clip_vision import load_clip_vision
    from models.upscale import load_upscale_model_from_state_dict, memory_unit, upscale_image
    from tests.test_upscale_models import esrgan_x4_sd
    from tests.tiny_clip_vision import tiny_vision

    upscaler = load_upscale_model_from_state_dict(esrgan_x4_sd(), "x4.pth")
    vision = load_clip_vision(tiny_vision("vit_l"))
    other = tiny_model(5, width=512)
    image = torch.rand(1, 24, 24, 3)
    want_up, want_cv = upscale_image(upscaler, image, device="cpu"), vision.encode_image(image).image_embeds

    sizes = [memory.module_size(m) / MB for m in (upscaler.model, vision.model, other)]
    fake(sum(sizes) - min(sizes) / 2)  # any two fit, never all three
    placement.place_clip_vision(vision)
    mgr = memory.manager()
    got_up = upscale_image(upscaler, image)
    assert resident(upscaler.model) == memory.module_size(upscaler.model)
    got_cv = vision.encode_image(image).image_embeds
    assert resident(vision.model) == memory.module_size(vision.model)
    mgr.events.clear()
    mgr.load([other])  # the least recently used (the upscaler) makes room
    assert mgr.events[0][0] == "unload" and mgr.events[0][1].startswith("upscale:")
    assert resident(upscaler.model) == 0 and resident(vision.model) > 0 and resident(other) > 0
    again = upscale_image(upscaler, image)  # loaded again, now the vision model is the oldest
    assert resident(vision.model) == 0 and resident(upscaler.model) > 0
    assert memory_unit(upscaler).modules[0] is upscaler.model
    for got, want in ((got_up, want_up), (again, want_up), (got_cv, want_cv)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
