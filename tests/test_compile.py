"""--compile (models/compiled.py): torch.compile of the UNet and VAE decoder on the CPU.

Most tests use dynamo's "aot_eager" backend behind a counting wrapper (tracing is real, the
backend compile is cheap); one test runs inductor for real (C++ kernels through gcc) and its
persistent cache. Models are micro UNets/VAEs built from configs, and the HTTP test uses the
tiny SD1 checkpoint.
"""
from __future__ import annotations

import logging
import os
import time

import pytest
import torch

from models import compiled, devices, progress
from models.diffusion import DiffusionModel
from models.latent_formats import SD15
from models.model_patcher import ModelPatcher
from models.unet import UNetModel
from models.vae import VAE, AutoencoderKL, VAEConfig


@pytest.fixture(autouse=True)
def _compile_state():
    torch.set_num_threads(1)
    torch._dynamo.reset()
    compiled.reset()
    yield
    compiled.reset()
    progress.set_progress_hook(None)
    devices.configure(None)


class CountingBackend:
    """A dynamo backend that counts the graphs it is given and hands them to another backend
    ("eager": the captured graph as it is; "aot_eager": through AOT autograd's functionalised
    graph, as inductor sees it)."""

    def __init__(self, inner="aot_eager", delay: float = 0.0, fail: bool = False):
        self.inner, self.delay, self.fail, self.graphs = inner, delay, fail, 0
        self.__name__ = f"counting_{inner}"

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        if self.fail:
            raise RuntimeError("no C compiler found (simulated)")
        if self.delay:
            time.sleep(self.delay)
        from torch._dynamo.backends.registry import lookup_backend
        return lookup_backend(self.inner)(gm, example_inputs)


def micro_unet(adm: int | None = None, seed: int = 0) -> UNetModel:
    from models.detect import UNetConfig
    cfg = UNetConfig(in_channels=4, out_channels=4, model_channels=32, num_res_blocks=[1, 1], channel_mult=[1, 2],
                     transformer_depth=[0, 1], transformer_depth_output=[0, 0, 1, 1], transformer_depth_middle=0,
                     context_dim=16, use_linear_in_transformer=False, adm_in_channels=adm, num_heads=2)
    torch.manual_seed(seed)
    unet = UNetModel(cfg).eval().requires_grad_(False)
    with torch.no_grad():  # default inits leave the output layer near zero: make every weight count
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return unet


def micro_model(adm=None) -> DiffusionModel:
    return DiffusionModel(micro_unet(adm), "sdxl" if adm else "sd1", SD15())


def inputs(batch=2, size=8, seed=1, adm=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=g)
    sigma = torch.full((batch,), 3.0)
    conds = {"c_crossattn": torch.randn(batch, 5, 16, generator=g)}
    if adm:
        conds["y"] = torch.randn(batch, adm, generator=g)
    return x, sigma, conds


def eager_apply(model, x, sigma, **conds):
    saved = compiled._override
    compiled.configure(enabled=False)
    try:
        with torch.no_grad():
            return model.apply_model(x, sigma, **conds)
    finally:
        compiled._override = saved


def compiled_apply(model, x, sigma, **conds):
    with torch.no_grad():
        return model.apply_model(x, sigma, **conds)


def test_off_by_default_and_on_with_the_flag(make_args):
    devices.configure(make_args())
    assert not compiled.active()
    model = micro_model()
    x, sigma, conds = inputs()
    compiled_apply(model, x, sigma, **conds)
    assert compiled.runner_of(model.diffusion_model) is None  # the eager path never touched it
    devices.configure(make_args("--compile"))
    s = compiled.settings()
    assert s.enabled and s.backend == "inductor" and s.cache_dir.endswith(os.path.join("user", "__comfyd", "compile_cache"))


def test_unet_graph_per_shape_equal_to_eager(caplog, tmp_path):
    backend = CountingBackend()
    compiled.configure(backend=backend, cache_dir=str(tmp_path / "cc"))
    model = micro_model(adm=24)
    x, sigma, conds = inputs(adm=24)
    with caplog.at_level(logging.INFO, logger="models.compiled"):
        out = compiled_apply(model, x, sigma, **conds)
    torch.testing.assert_close(out, eager_apply(model, x, sigma, **conds), rtol=1e-5, atol=1e-5)
    runner = compiled.runner_of(model.diffusion_model)
    assert backend.graphs == runner.compiles == 1
    assert any("compiled UNet for 2x4x8x8 fp32 in" in r.getMessage() for r in caplog.records)

    # the same shape again (new values): no compile
    x2, sigma2, conds2 = inputs(seed=2, adm=24)
    torch.testing.assert_close(compiled_apply(model, x2, 0.5 * sigma2, **conds2),
                               eager_apply(model, x2, 0.5 * sigma2, **conds2), rtol=1e-5, atol=1e-5)
    assert backend.graphs == 1
    # a new size compiles once, then both sizes are served from their graphs
    x3, sigma3, conds3 = inputs(batch=1, size=16, adm=24)
    torch.testing.assert_close(compiled_apply(model, x3, sigma3, **conds3),
                               eager_apply(model, x3, sigma3, **conds3), rtol=1e-5, atol=1e-5)
    assert backend.graphs == 2
    compiled_apply(model, x, sigma, **conds)
    compiled_apply(model, x3, sigma3, **conds3)
    assert backend.graphs == runner.compiles == 2 and len(runner.graphs) == 2
    assert runner.failed is None


def test_weight_patches_are_seen_by_the_compiled_unet():
    """LoRA patches land in place (copy_) or swap a widened tensor in (.data): both reach the graph."""
    backend = CountingBackend("eager")
    compiled.configure(backend=backend, cache_dir=None)
    model = micro_model()
    patcher = ModelPatcher(model)
    x, sigma, conds = inputs()
    base = compiled_apply(model, x, sigma, **conds)
    w = model.diffusion_model.out[2].weight
    delta = torch.randn_like(w) * 0.05
    patched = patcher.clone()
    patched.add_patches({"diffusion_model.out.2.weight": ("diff", (delta,))})
    patched.prepare_for_sampling()
    out = compiled_apply(model, x, sigma, **conds)
    assert not torch.allclose(out, base)
    torch.testing.assert_close(out, eager_apply(model, x, sigma, **conds), rtol=1e-5, atol=1e-5)
    patcher.prepare_for_sampling()  # back to no patches: the original weights, restored in place
    torch.testing.assert_close(compiled_apply(model, x, sigma, **conds), base, rtol=0, atol=0)
    assert backend.graphs == 1  # same dtypes and shapes: the one graph served all three

    # fp16-stored weights patched for an fp32-computing model are swapped for fp32 tensors
    model16 = DiffusionModel(micro_unet(), "sd1", SD15(), compute_dtype=torch.float32)
    model16.diffusion_model.half()
    p16 = ModelPatcher(model16)
    base16 = compiled_apply(model16, x, sigma, **conds)
    torch.testing.assert_close(base16, eager_apply(model16, x, sigma, **conds), rtol=1e-5, atol=1e-5)
    lora = p16.clone()
    lora.add_patches({"diffusion_model.out.2.weight": ("diff", (delta,))})
    lora.prepare_for_sampling()
    assert model16.diffusion_model.out[2].weight.dtype == torch.float32
    out16 = compiled_apply(model16, x, sigma, **conds)
    assert not torch.allclose(out16, base16)
    torch.testing.assert_close(out16, eager_apply(model16, x, sigma, **conds), rtol=1e-5, atol=1e-5)


def test_patches_and_controlnet_run_eagerly():
    backend = CountingBackend("eager")
    compiled.configure(backend=backend, cache_dir=None)
    model = micro_model()
    x, sigma, conds = inputs()
    calls = []

    def output_patch(h, skip, opts):
        calls.append(opts["block"])
        return h * 1.5, skip
    opts = {"patches": {"output_block_patch": [output_patch]}}
    patched = compiled_apply(model, x, sigma, transformer_options=opts, **conds)
    assert calls and backend.graphs == 0
    assert torch.equal(patched, eager_apply(model, x, sigma, transformer_options=opts, **conds))
    # ControlNet residuals: eager, and the residual is applied
    control = {"middle": [torch.ones(2, 64, 4, 4)]}
    with_control = compiled_apply(model, x, sigma, control=control, **conds)
    assert backend.graphs == 0
    assert torch.equal(with_control, eager_apply(model, x, sigma, control={"middle": [torch.ones(2, 64, 4, 4)]}, **conds))
    # plain options (what calc_cond_batch passes) compile
    plain = {"cond_or_uncond": [0, 1], "uuids": ["a", "b"], "sigmas": sigma, "patches": {}}
    compiled_apply(model, x, sigma, transformer_options=plain, **conds)
    assert backend.graphs == 1
    # a partially loaded model (some layers left on the offload device) runs eagerly
    runner = compiled.runner_of(model.diffusion_model)
    assert compiled.unet_eager_reason(runner, x, None, plain, {}) is None
    model.diffusion_model.out[2].to("meta")
    assert compiled.unet_eager_reason(runner, x, None, plain, {}) == "weights not all on the compute device"


def test_compile_failure_falls_back_to_eager(caplog):
    backend = CountingBackend(fail=True)
    compiled.configure(backend=backend, cache_dir=None)
    model = micro_model()
    x, sigma, conds = inputs()
    with caplog.at_level(logging.WARNING, logger="models.compiled"):
        out = compiled_apply(model, x, sigma, **conds)
    assert torch.equal(out, eager_apply(model, x, sigma, **conds))
    assert any("failed, running it eagerly" in r.getMessage() and "no C compiler" in r.getMessage()
               for r in caplog.records)
    tries = backend.graphs
    assert tries >= 1 and compiled.runner_of(model.diffusion_model).failed
    compiled_apply(model, x, sigma, **conds)
    assert backend.graphs == tries  # not retried for every step
    # an input the model itself rejects is not blamed on compile: the eager error surfaces
    other = micro_model()
    with pytest.raises(ValueError, match="ADM vector"):
        compiled_apply(other, x, sigma, y=torch.zeros(2, 8), **conds)
    assert compiled.runner_of(other.diffusion_model).failed is None


def test_vae_decoder_compiled_equal_to_eager():
    backend = CountingBackend()
    compiled.configure(backend=backend, cache_dir=None)
    torch.manual_seed(0)
    vae = VAE(AutoencoderKL(VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1)))
    latent = torch.randn(2, 4, 6, 6)
    img = vae.decode(latent)
    assert img.shape == (2, 12, 12, 3) and backend.graphs == 1
    compiled.configure(enabled=False)
    torch.testing.assert_close(img, vae.decode(latent), rtol=1e-5, atol=1e-5)
    compiled.configure(backend=backend, cache_dir=None)
    vae.decode(latent * 0.5)
    assert backend.graphs == 1 and compiled.runner_of(vae.first_stage_model).compiles == 1


def test_compile_progress_reported_while_compiling(tmp_path):
    events = []
    progress.set_progress_hook(lambda value, total, preview=None, node=None, **kw: events.append((value, total)))
    backend = CountingBackend("eager", delay=2.6)
    compiled.configure(backend=backend, cache_dir=str(tmp_path))
    model = micro_model()
    x, sigma, conds = inputs()
    compiled_apply(model, x, sigma, **conds)
    assert events[0] == (0, 100) and events[-1] == (100, 100)
    ticks = [v for v, _ in events[1:-1]]
    assert len(ticks) >= 2 and ticks == sorted(ticks) and 0 < ticks[0] < 100
    # the time is remembered per shape: the next compile of it reports against that estimate
    times = compiled._load_times()
    assert times["UNet 2x4x8x8 fp32"] >= 2.6
    events.clear()
    compiled_apply(model, x, sigma, **conds)
    assert events == []  # no compile, no compile progress


class SmallUNet(torch.nn.Module):
    """UNet-shaped (x, timesteps, context=..., control=..., transformer_options=...) with a
    handful of kernels: inductor's C++ build time on 2 shared cores grows with the kernel
    count, not the width, so the real inductor test uses this instead of the micro UNet."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.ctx = torch.nn.Linear(16, 8)
        self.out = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x, timesteps, context=None, control=None, transformer_options=None, **kwargs):
        h = torch.nn.functional.silu(self.conv(x) + self.ctx(context.mean(1))[:, :, None, None])
        return self.out(h) * torch.cos(timesteps / 1000)[:, None, None, None]


def test_inductor_matches_eager_and_fills_the_persistent_cache(tmp_path):
    """The real inductor compile (gcc): equal outputs, an in-place weight change seen without
    recompiling, the cache dir populated, and a fresh process-like compile served from it."""
    from torch._dynamo.utils import counters
    cache = tmp_path / "compile_cache"
    compiled.configure(backend="inductor", cache_dir=str(cache))
    torch.manual_seed(0)
    model = DiffusionModel(SmallUNet().requires_grad_(False), "sd1", SD15())
    x, sigma, conds = inputs()
    start = time.perf_counter()
    out = compiled_apply(model, x, sigma, **conds)
    cold = time.perf_counter() - start
    runner = compiled.runner_of(model.diffusion_model)
    assert runner.failed is None and runner.compiles == 1
    torch.testing.assert_close(out, eager_apply(model, x, sigma, **conds), rtol=1e-5, atol=1e-5)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache)
    assert any((cache / "fxgraph").rglob("*"))
    assert (cache / compiled.ARTIFACTS_FILE).stat().st_size > 0
    assert "UNet 2x4x8x8 fp32" in compiled._load_times()

    with torch.no_grad():
        model.diffusion_model.out.weight.mul_(-1.0)  # what WeightPatcher's copy_ does
    flipped = compiled_apply(model, x, sigma, **conds)
    assert runner.compiles == 1
    assert not torch.allclose(flipped, out)
    torch.testing.assert_close(flipped, eager_apply(model, x, sigma, **conds), rtol=1e-5, atol=1e-5)

    # a "restarted server": dynamo's in-memory state gone, the artifacts file reloaded
    torch._dynamo.reset()
    compiled.reset()
    compiled.configure(backend="inductor", cache_dir=str(cache))
    hits = counters["inductor"]["fxgraph_cache_hit"]
    warm_model = DiffusionModel(SmallUNet().requires_grad_(False), "sd1", SD15())
    start = time.perf_counter()
    compiled_apply(warm_model, x, sigma, **conds)
    warm = time.perf_counter() - start
    assert counters["inductor"]["fxgraph_cache_hit"] > hits
    print(f"small UNet inductor compile: cold {cold:.1f} s, from the cache {warm:.1f} s")


@pytest.mark.skipif(not os.path.isdir(__import__("tests.tiny_checkpoints", fromlist=["LAYOUT_DIR"]).LAYOUT_DIR),
                    reason="oracle layouts not available")
async def test_server_with_compile_flag_gives_the_eager_images(aiohttp_client, make_args, base_dir, monkeypatch, caplog):
    """Over HTTP with the tiny SD1 checkpoint: `--compile` (aot_eager backend: real dynamo
    capture, no C++ build) gives the eager server's latent and image, reports the compile as
    progress, and the second prompt at the size compiles nothing."""
    import numpy as np
    from PIL import Image

    from models import folders
    from server.app import create_app
    from tests.test_text_to_image_http import saved_latent, txt2img
    from tests.tiny_checkpoints import write_tiny_checkpoint
    from wsclient import run_prompt

    write_tiny_checkpoint(str(base_dir / "models" / "checkpoints" / "tiny_sd1.safetensors"), "sd1", seed=3)
    folders._list_cache.clear()

    async def run(client, seed):
        resp, events, history = await run_prompt(client, txt2img(seed=seed), timeout=300)
        assert history["status"]["status_str"] == "success", [e for e in events if e[0] == "execution_error"]
        img = history["outputs"]["8"]["images"][0]
        pixels = np.asarray(Image.open(base_dir / "output" / img["subfolder"] / img["filename"]))
        return saved_latent(base_dir, history), pixels, events

    eager_client = await aiohttp_client(create_app(make_args()))
    eager_latent, eager_pixels, _ = await run(eager_client, 5)
    await eager_client.close()

    monkeypatch.setenv("COMFYD_COMPILE_BACKEND", "aot_eager")
    client = await aiohttp_client(create_app(make_args("--compile")))
    with caplog.at_level(logging.INFO, logger="models.compiled"):
        latent, pixels, events = await run(client, 5)
    torch.testing.assert_close(latent, eager_latent, rtol=1e-4, atol=1e-4)
    assert np.abs(pixels.astype(int) - eager_pixels.astype(int)).max() <= 1
    logs = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("compiled UNet for 2x4x8x8 fp32 in") for m in logs), logs  # cond+uncond batch
    assert any(m.startswith("compiled VAE decoder for 1x4x8x8 fp32 in") for m in logs), logs
    compile_progress = [d for t, d in events if t == "progress" and d["max"] == 100]
    assert {d["node"] for d in compile_progress} >= {"5", "6"}  # KSampler, VAEDecode
    assert (base_dir / "user" / "__comfyd" / "compile_cache" / compiled.TIMES_FILE).is_file()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="models.compiled"):
        await run(client, 6)
    assert not [r for r in caplog.records if r.getMessage().startswith("compiled ")]
