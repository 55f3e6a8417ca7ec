"""Loading tiny checkpoints through the same code as full-size files: the file formats, the
split into UNet / VAE / text encoders, forwards of every family, and clear errors."""
import os
import pickle

import pytest
import torch

from models.checkpoint import load_checkpoint, load_diffusion_model, load_vae
from models.detect import UnknownArchitectureError
from models.state_dict import ModelFileError, open_state_dict
from tests.tiny_checkpoints import LAYOUT_DIR, tiny_checkpoint, write_tiny_checkpoint

pytestmark = pytest.mark.skipif(not os.path.isdir(LAYOUT_DIR), reason="oracle layouts not available")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    return {f: write_tiny_checkpoint(str(d / f"{f}.safetensors"), f, seed=3)
            for f in ("sd1", "sd1_inpaint", "sd2_v", "sdxl", "sdxl_refiner", "ssd1b", "segmind_vega")}


def _context(model, batch=2, tokens=77):
    return torch.randn(batch, tokens, model.diffusion_model.config.context_dim, generator=torch.Generator().manual_seed(1))


def _conds(model, batch=2):
    """Inputs the sampler would build: context, and for SDXL-type models the ADM vector."""
    kw = {"cross_attn": _context(model, batch)}
    if model.diffusion_model.config.adm_in_channels:
        kw["pooled_output"] = torch.randn(batch, 80, generator=torch.Generator().manual_seed(2))
    built = model.extra_conds(noise=torch.zeros(batch, 4, 8, 8), device="cpu", width=64, height=64, **kw)
    return {k: v.cond for k, v in built.items()}


@pytest.mark.parametrize("family", ["sd1", "sd2_v", "sdxl", "sdxl_refiner", "ssd1b", "segmind_vega"])
def test_tiny_checkpoint_loads_and_runs(files, family):
    ck = load_checkpoint(files[family], weight_dtype=torch.float16)
    model = ck.model
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = model.apply_model(x, torch.tensor([14.6, 0.5]), **_conds(model))
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert not torch.equal(out[0], out[1])  # sigma and conditioning matter
    image = ck.vae.decode(torch.randn(1, 4, 4, 6))
    assert image.shape == (1, 32, 48, 3) and image.min() >= 0 and image.max() <= 1
    assert set(ck.text_encoders) == set(ck.detection.text_encoders)


def test_text_encoders_are_handed_over_in_hf_layout(files):
    sd1 = load_checkpoint(files["sd1"], output_model=False, output_vae=False).text_encoders["clip_l"]
    assert "text_model.encoder.layers.11.self_attn.q_proj.weight" in sd1
    assert sd1["text_model.embeddings.token_embedding.weight"].shape == (49408, 48)
    xl = load_checkpoint(files["sdxl"], output_model=False, output_vae=False).text_encoders
    g = xl["clip_g"]
    assert g["text_model.encoder.layers.31.self_attn.k_proj.weight"].shape == (80, 80)
    assert g["text_model.encoder.layers.0.mlp.fc1.weight"].shape == (320, 80)
    assert g["text_model.final_layer_norm.weight"].shape == (80,)
    assert g["text_model.embeddings.position_embedding.weight"].shape == (77, 80)
    assert g["text_projection.weight"].shape == (80, 80)
    assert not any("resblocks" in k or "in_proj" in k for k in g)
    # the q/k/v split and the projection transpose keep the values
    raw = tiny_checkpoint("sdxl", seed=3)
    in_proj = raw["conditioner.embedders.1.model.transformer.resblocks.5.attn.in_proj_weight"]
    assert torch.equal(g["text_model.encoder.layers.5.self_attn.v_proj.weight"], in_proj[160:240])
    assert torch.equal(g["text_projection.weight"], raw["conditioner.embedders.1.model.text_projection"].T)
    assert "clip_l" in xl and "text_model.final_layer_norm.bias" in xl["clip_l"]


def test_fp16_weights_with_fp32_compute_equal_fp32_weights(files):
    """Keeping the file's fp16 weights (cast per layer) gives bit-identical fp32 results."""
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    outs = []
    for wd in (torch.float16, torch.float32):
        m = load_checkpoint(files["sdxl"], weight_dtype=wd, output_vae=False, output_clip=False).model
        assert next(m.diffusion_model.parameters()).dtype == wd
        with torch.inference_mode():
            outs.append(m.apply_model(x, torch.tensor([1.0]), **_conds(m, 1)))
    assert torch.equal(outs[0], outs[1])


def test_pickle_checkpoint_gives_the_same_model(files, tmp_path):
    ckpt = write_tiny_checkpoint(str(tmp_path / "sd1.ckpt"), "sd1", seed=3)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    outs = []
    for path in (files["sd1"], ckpt):
        m = load_checkpoint(path, output_vae=False, output_clip=False).model
        with torch.inference_mode():
            outs.append(m.apply_model(x, torch.tensor([2.0]), **_conds(m, 1)))
    assert torch.equal(outs[0], outs[1])


def test_inpaint_model_takes_mask_and_masked_image(files):
    m = load_checkpoint(files["sd1_inpaint"], output_vae=False, output_clip=False).model
    assert m.diffusion_model.config.in_channels == 9
    noise = torch.zeros(1, 4, 8, 8)
    built = m.extra_conds(noise=noise, device="cpu", cross_attn=_context(m, 1), latent_image=noise,
                          denoise_mask=torch.ones(1, 1, 8, 8))
    assert built["c_concat"].cond.shape == (1, 5, 8, 8)
    with torch.inference_mode():
        out = m.apply_model(torch.randn(1, 4, 8, 8), torch.tensor([1.0]),
                            **{k: v.cond for k, v in built.items()})
    assert out.shape == (1, 4, 8, 8)


def test_odd_latent_sizes_and_control_residuals(files):
    """Upsamplers follow the skip sizes; ControlNet residuals are added where given."""
    m = load_checkpoint(files["sd1"], output_vae=False, output_clip=False).model
    unet = m.diffusion_model
    x = torch.randn(1, 4, 9, 7, generator=torch.Generator().manual_seed(0))
    ctx, t = _context(m, 1), torch.tensor([500.0])
    with torch.inference_mode():
        base = unet(x, t, ctx)
        assert base.shape == x.shape
        skips = []
        hooks = [b.register_forward_hook(lambda mod, i, o: skips.append(o.shape)) for b in unet.input_blocks]
        unet(x, t, ctx)
        for h in hooks:
            h.remove()
        zero = {"output": [torch.zeros(s) for s in skips], "middle": [torch.zeros(skips[-1])]}
        assert torch.equal(unet(x, t, ctx, control=zero), base)
        nudged = {"output": [torch.zeros(s) for s in skips], "middle": [torch.full(skips[-1], 0.5)]}
        assert not torch.equal(unet(x, t, ctx, control=nudged), base)


def test_vae_encode_crops_to_multiples_of_8_and_decodes_back(files):
    vae = load_vae(files["sd1"])
    pixels = torch.rand(2, 37, 50, 4)  # RGBA, not a multiple of 8
    latent = vae.encode(pixels)
    assert latent.shape == (2, 4, 4, 6)
    assert vae.decode(latent).shape == (2, 32, 48, 3)


def test_bare_vae_and_unet_files(files, tmp_path):
    from safetensors.torch import save_file
    sd = tiny_checkpoint("sd1", seed=3)
    save_file({k[len("first_stage_model."):]: v for k, v in sd.items() if k.startswith("first_stage_model.")},
              str(tmp_path / "vae.safetensors"))
    save_file({k[len("model.diffusion_model."):]: v for k, v in sd.items() if k.startswith("model.diffusion_model.")},
              str(tmp_path / "unet.safetensors"))
    assert load_vae(str(tmp_path / "vae.safetensors")).decode(torch.zeros(1, 4, 2, 2)).shape == (1, 16, 16, 3)
    unet_model = load_diffusion_model(str(tmp_path / "unet.safetensors"))
    assert unet_model.detection.family == "sd1" and unet_model.detection.unet_prefix == ""
    with pytest.raises(UnknownArchitectureError, match="bare UNet"):
        load_checkpoint(str(tmp_path / "unet.safetensors"))
    with pytest.raises(ModelFileError, match="not a VAE"):
        load_vae(str(tmp_path / "unet.safetensors"))


def test_missing_truncated_and_corrupt_files(files, tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_checkpoint(str(tmp_path / "nope.safetensors"))
    data = open(files["sd1"], "rb").read()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        load_checkpoint(str(tmp_path / "cut.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(os.urandom(4096))
    with pytest.raises(ModelFileError, match="not a valid safetensors"):
        load_checkpoint(str(tmp_path / "junk.safetensors"))
    (tmp_path / "junk.ckpt").write_bytes(b"not a pickle at all" * 10)
    with pytest.raises(ModelFileError, match="cannot load junk.ckpt"):
        load_checkpoint(str(tmp_path / "junk.ckpt"))


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_pickles_are_loaded_weights_only(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Payload()}, str(path))
    with pytest.raises(ModelFileError, match="not loaded for safety"):
        open_state_dict(str(path))
    legacy = tmp_path / "legacy.pt"
    with open(legacy, "wb") as f:
        pickle.dump({"a": 1}, f)
    with pytest.raises(ModelFileError):
        open_state_dict(str(legacy))


def test_lora_given_to_the_checkpoint_loader(tmp_path):
    from safetensors.torch import save_file
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(4, 2),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 4)},
              str(tmp_path / "lora.safetensors"))
    with pytest.raises(UnknownArchitectureError, match="looks like a LoRA"):
        load_checkpoint(str(tmp_path / "lora.safetensors"))


def test_safetensors_are_read_lazily(files):
    """Opening reads the header only; tensors come one at a time in the requested dtype."""
    with open_state_dict(files["sdxl"]) as src:
        assert src.shape("model.diffusion_model.input_blocks.0.0.weight") == (32, 4, 3, 3)
        t = src.get("first_stage_model.decoder.conv_in.weight", torch.float32)
        assert t.dtype == torch.float32 and t.shape == (128, 4, 3, 3)


def test_tiled_scale_blends_tiles_back_into_the_whole():
    import torch.nn.functional as F

    from models.tiling import tile_count, tiled_scale
    x = torch.rand(2, 3, 21, 30, generator=torch.Generator().manual_seed(0))
    calls = []

    def up(t):
        calls.append(t.shape)
        return F.interpolate(t, scale_factor=2, mode="nearest")
    out = tiled_scale(x, up, tile_x=8, tile_y=8, overlap=2, upscale_amount=2, out_channels=3)
    assert torch.allclose(out, F.interpolate(x, scale_factor=2, mode="nearest"), atol=1e-6)
    assert len(calls) == 2 * tile_count(30, 21, 8, 8, 2) and max(s[2] for s in calls) <= 8


def test_tiled_vae_matches_untiled_when_one_tile_covers_the_image(files):
    vae = load_vae(files["sd1"])
    latent = torch.randn(1, 4, 6, 5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(vae.decode_tiled(latent, 64, 64, 16), vae.decode(latent), atol=1e-6)
    tiled = vae.decode_tiled(latent, tile_x=4, tile_y=4, overlap=1)
    assert tiled.shape == (1, 48, 40, 3) and tiled.min() >= 0 and tiled.max() <= 1
    pixels = torch.rand(1, 40, 48, 3, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(vae.encode_tiled(pixels, 512, 512, 64), vae.encode(pixels), atol=1e-5)
    assert vae.encode_tiled(pixels, tile_x=16, tile_y=16, overlap=4).shape == (1, 4, 5, 6)


@pytest.mark.parametrize("family", ["sd1", "sd2_v", "sdxl", "sdxl_refiner"])
def test_checkpoint_round_trip_to_the_public_layout(family, tmp_path):
    """Split, then saved back (CheckpointSave): the same keys and tensors as the file."""
    from models.checkpoint import checkpoint_state_dict
    original = tiny_checkpoint(family, seed=4)
    ck = load_checkpoint(original, weight_dtype=torch.float16)
    saved = checkpoint_state_dict(ck.model, ck.text_encoders, ck.vae)
    ddpm = {k for k in original if "." not in k}  # SD1's schedule buffers are not written back
    assert set(saved) == set(original) - ddpm
    for k, v in saved.items():
        assert torch.equal(v, original[k]), k


def test_disable_mmap_gives_equal_tensors(files):
    from models import state_dict
    with open_state_dict(files["sd1"]) as src:
        mapped = src.get("model.diffusion_model.out.2.weight")
        state_dict.set_mmap(False)
        try:
            copied = src.get("model.diffusion_model.out.2.weight")
        finally:
            state_dict.set_mmap(True)
    assert torch.equal(mapped, copied) and mapped.data_ptr() != copied.data_ptr()


@pytest.mark.parametrize("family", ["sd1", "sdxl", "ssd1b"])
def test_diffusers_format_unet_loads_like_the_ldm_one(family, tmp_path):
    from safetensors.torch import save_file

    from models.lora.keymap import diffusers_to_ldm
    sd = tiny_checkpoint(family, seed=8)
    ldm = {k[len("model.diffusion_model."):]: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}
    cfg = load_diffusion_model(ldm).detection.unet
    to_ldm = diffusers_to_ldm(cfg.num_res_blocks, cfg.transformer_depth, cfg.transformer_depth_output,
                              cfg.transformer_depth_middle)
    to_diffusers = {}
    for d, l_key in to_ldm.items():
        to_diffusers.setdefault(l_key, d)  # label_emb has two diffusers spellings; keep one
    assert set(ldm) <= set(to_diffusers)
    save_file({to_diffusers[k]: v for k, v in ldm.items()}, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    outs = []
    for source in (ldm, str(tmp_path / "diffusion_pytorch_model.safetensors")):
        m = load_diffusion_model(source)
        assert m.detection.family == load_diffusion_model(ldm).detection.family
        with torch.inference_mode():
            outs.append(m.apply_model(x, torch.tensor([1.0]), **_conds(m, 1)))
    assert torch.equal(outs[0], outs[1])
