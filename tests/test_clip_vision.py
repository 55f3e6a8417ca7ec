"""CLIP vision towers (ViT-L/H/bigG) on tiny seeded files in the real key layouts: detection,
the OpenCLIP layout, ComfyUI's preprocessing, a forward checked against an independent float64
reference written here, errors for other files, and style models."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from models.clip_vision import (CLIP_MEAN, CLIP_STD, UnknownVisionModelError, clip_preprocess,
                                detect_vision_config, load_clip_vision)
from models.style_model import load_style_model
from models.state_dict import ModelFileError
from tiny_checkpoints import LAYOUT_DIR
from tiny_clip_vision import TINY_VISION, REAL, save, tiny_style_model, tiny_vision, to_openclip, vision_layout

pytestmark = pytest.mark.skipif(not os.path.isdir(LAYOUT_DIR), reason="oracle layouts not available")
torch.set_num_threads(1)


# -- an independent reference -----------------------------------------------------------------

def reference_tower(sd, pixels, heads=16, quick_gelu=False):
    """HF CLIPVisionModelWithProjection written out in float64 with an explicit softmax."""
    w = {k: v.double() for k, v in sd.items()}
    p = "vision_model."
    width = w[p + "embeddings.class_embedding"].shape[0]
    patch = w[p + "embeddings.patch_embedding.weight"]
    x = F.conv2d(pixels.double(), patch, stride=patch.shape[-1]).flatten(2).transpose(1, 2)
    cls = w[p + "embeddings.class_embedding"].expand(x.shape[0], 1, width)
    x = torch.cat([cls, x], 1) + w[p + "embeddings.position_embedding.weight"]

    def ln(t, name):
        return F.layer_norm(t, (width,), w[name + ".weight"], w[name + ".bias"], 1e-5)

    def lin(t, name, bias=True):
        return t @ w[name + ".weight"].t() + (w[name + ".bias"] if bias else 0)

    x = ln(x, p + "pre_layrnorm")
    layers = 1 + max(int(k.split(".")[3]) for k in w if k.startswith(p + "encoder.layers."))
    hidden = []
    for i in range(layers):
        q = f"{p}encoder.layers.{i}."
        h = ln(x, q + "layer_norm1")
        b, n, _ = h.shape
        d = width // heads
        qh, kh, vh = (lin(h, q + f"self_attn.{s}_proj").view(b, n, heads, d).transpose(1, 2) for s in "qkv")
        att = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
        x = x + lin((att @ vh).transpose(1, 2).reshape(b, n, width), q + "self_attn.out_proj")
        h = lin(ln(x, q + "layer_norm2"), q + "mlp.fc1")
        h = h * torch.sigmoid(1.702 * h) if quick_gelu else 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        x = x + lin(h, q + "mlp.fc2")
        hidden.append(x)
    pooled = ln(x[:, 0], p + "post_layernorm")
    return x, hidden[-2], pooled @ w["visual_projection.weight"].t()


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


# -- detection ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["vit_bigg", "vit_h", "vit_l"])
def test_real_size_layouts_are_detected_with_comfyui_configs(kind):
    cfg = detect_vision_config(vision_layout(kind, tiny=False))
    layers, width, ffn, proj = REAL[kind]
    assert (cfg.kind, cfg.layers, cfg.width, cfg.ffn, cfg.projection_dim) == (kind, layers, width, ffn, proj)
    assert (cfg.heads, cfg.patch, cfg.image_size, cfg.positions) == (16, 14, 224, 257)
    assert cfg.activation == ("quick_gelu" if kind == "vit_l" else "gelu")


def test_vit_l_336_and_llava_projector_detected():
    layout = vision_layout("vit_l", tiny=False)
    layout["vision_model.embeddings.position_embedding.weight"] = (577, 1024)
    cfg = detect_vision_config(layout)
    assert cfg.kind == "vit_l_336" and cfg.image_size == 336 and not cfg.llava_projector
    layout["multi_modal_projector.linear_1.weight"] = (4096, 1024)
    assert detect_vision_config(layout).llava_projector


def test_clip_vision_g_layout_is_the_real_file():
    """The bigG layout the tiny files shrink is the real clip_vision_g key list, key for key."""
    from tiny_checkpoints import real_layout
    real = real_layout("clip_vision_g")
    assert vision_layout("vit_bigg", tiny=False) == real
    assert set(vision_layout("vit_bigg")) == set(real)


# -- forward ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["vit_bigg", "vit_h", "vit_l"])
def test_forward_matches_independent_reference(kind):
    sd = tiny_vision(kind, seed=3)
    model = load_clip_vision(sd)
    assert model.config.kind == kind and model.image_size == 224
    image = torch.rand(2, 230, 260, 3, generator=torch.Generator().manual_seed(1))
    out = model.encode_image(image)
    pixels = clip_preprocess(image, 224)
    last, penult, embeds = reference_tower(sd, pixels, quick_gelu=kind == "vit_l")
    assert out.last_hidden_state.shape == (2, 257, TINY_VISION[kind][1])
    assert out.image_embeds.shape == (2, TINY_VISION[kind][3])
    assert rel(out.last_hidden_state, last) < 1e-5
    assert rel(out["penultimate_hidden_states"], penult) < 1e-5
    assert rel(out["image_embeds"], embeds) < 1e-5
    assert out.mm_projected is None and out.last_hidden_state.dtype == torch.float32
    # the other activation would be visibly wrong: the reference tells them apart
    assert rel(out.last_hidden_state, reference_tower(sd, pixels, quick_gelu=kind != "vit_l")[0]) > 1e-4


def test_precision_matches_comfyui_fp16_layers_fp32_norms_and_projection():
    model = load_clip_vision({k: v.float() for k, v in tiny_vision("vit_bigg", seed=2).items()})
    sd = model.get_sd()
    assert sd["vision_model.encoder.layers.0.mlp.fc1.weight"].dtype == torch.float16
    assert sd["vision_model.embeddings.patch_embedding.weight"].dtype == torch.float16
    for k in ("vision_model.pre_layrnorm.weight", "vision_model.post_layernorm.bias", "visual_projection.weight"):
        assert sd[k].dtype == torch.float32
    exact = load_clip_vision(tiny_vision("vit_bigg", seed=2, dtype=torch.float32), dtype=None)
    assert exact.get_sd()["vision_model.encoder.layers.0.mlp.fc1.weight"].dtype == torch.float32


def test_openclip_layout_gives_the_same_model(tmp_path):
    sd = tiny_vision("vit_h", seed=4)
    image = torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(2))
    hf = load_clip_vision(save(str(tmp_path / "hf.safetensors"), sd)).encode_image(image)
    oc = load_clip_vision(save(str(tmp_path / "oc.safetensors"), to_openclip(sd))).encode_image(image)
    assert torch.equal(hf.image_embeds, oc.image_embeds)
    assert torch.equal(hf.last_hidden_state, oc.last_hidden_state)
    prefixed = {"some.prefix." + k: v for k, v in sd.items()}  # HF towers under a prefix are found too
    assert torch.equal(load_clip_vision(prefixed).encode_image(image).image_embeds, hf.image_embeds)


# -- preprocessing ---------------------------------------------------------------------------------

def _normalise(x):
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return ((x * 255).clamp(0, 255).round() / 255 - mean) / std


def test_preprocess_at_size_only_quantises_and_normalises():
    image = torch.rand(1, 224, 224, 4)  # alpha dropped
    out = clip_preprocess(image)
    assert out.shape == (1, 3, 224, 224)
    torch.testing.assert_close(out[0], _normalise(image[0, ..., :3].permute(2, 0, 1)), rtol=0, atol=1e-6)


def test_preprocess_center_crop_takes_the_middle_of_the_long_side():
    image = torch.rand(1, 224, 448, 3)  # short side already 224: only the crop acts
    out = clip_preprocess(image, crop=True)
    torch.testing.assert_close(out[0], _normalise(image[0, :, 112:336].permute(2, 0, 1)), rtol=0, atol=2e-5)
    tall = torch.rand(1, 500, 224, 3)
    out = clip_preprocess(tall, crop=True)
    torch.testing.assert_close(out[0], _normalise(tall[0, 138:362].permute(2, 0, 1)), rtol=0, atol=2e-5)


def test_preprocess_resizes_short_side_bicubic_antialiased_or_squashes():
    image = torch.rand(1, 100, 150, 3, generator=torch.Generator().manual_seed(0))
    # center: short side 100 -> 224, long side round(150 * 2.24) = 336, then the centre 224 columns
    big = F.interpolate(image.movedim(-1, 1), size=(224, 336), mode="bicubic", antialias=True)
    torch.testing.assert_close(clip_preprocess(image, crop=True)[0], _normalise(big[0, :, :, 56:280]), rtol=0, atol=1e-5)
    squash = F.interpolate(image.movedim(-1, 1), size=(224, 224), mode="bicubic", antialias=True)
    torch.testing.assert_close(clip_preprocess(image, crop=False)[0], _normalise(squash[0]), rtol=0, atol=1e-5)
    # overshoot from bicubic ringing is clipped before normalising
    assert clip_preprocess(torch.ones(1, 50, 60, 3)).max() <= ((1 - min(CLIP_MEAN)) / min(CLIP_STD)) + 1e-5


def test_crop_choice_changes_embeddings_of_non_square_images():
    model = load_clip_vision(tiny_vision("vit_l", seed=1))
    image = torch.rand(1, 120, 240, 3, generator=torch.Generator().manual_seed(5))
    a, b = model.encode_image(image, crop=True), model.encode_image(image, crop=False)
    assert not torch.allclose(a.image_embeds, b.image_embeds)
    square = torch.rand(1, 224, 224, 3)
    assert torch.equal(model.encode_image(square, crop=True).image_embeds,
                       model.encode_image(square, crop=False).image_embeds)


# -- files that are not CLIP vision models -------------------------------------------------------------

def test_unknown_files_raise_naming_what_was_found():
    from tiny_checkpoints import tiny_checkpoint
    with pytest.raises(UnknownVisionModelError, match="not a CLIP vision model.*tensors under"):
        load_clip_vision(tiny_checkpoint("sd1"))
    shallow = {k: v for k, v in tiny_vision("vit_l").items()
               if not k.startswith("vision_model.encoder.layers.") or int(k.split(".")[3]) < 12}
    with pytest.raises(UnknownVisionModelError, match="12 layers"):
        load_clip_vision(shallow)
    with pytest.raises(UnknownVisionModelError, match="DINOv2"):
        load_clip_vision({"encoder.layer.23.layer_scale2.lambda1": torch.zeros(4)})
    siglip = {k: v for k, v in tiny_vision("vit_l").items() if "class_embedding" not in k}
    with pytest.raises(UnknownVisionModelError, match="SigLIP"):
        load_clip_vision(siglip)
    broken = tiny_vision("vit_h")
    broken["vision_model.encoder.layers.3.mlp.fc1.weight"] = torch.zeros(7, 7)
    with pytest.raises(ModelFileError, match="wrong shape"):
        load_clip_vision(broken)


# -- style models -------------------------------------------------------------------------------------

def reference_style(sd, hidden, heads=8):
    w = {k: v.double() for k, v in sd.items()}
    width = w["style_embedding"].shape[-1]
    x = torch.cat([hidden.double(), w["style_embedding"].expand(hidden.shape[0], -1, -1)], 1)
    x = F.layer_norm(x, (width,), w["ln_pre.weight"], w["ln_pre.bias"])
    i = 0
    while f"transformer_layes.{i}.ln_1.weight" in w:
        p = f"transformer_layes.{i}."
        h = F.layer_norm(x, (width,), w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        q, k, v = (h @ w[p + "attn.in_proj_weight"].t() + w[p + "attn.in_proj_bias"]).chunk(3, -1)
        b, n, _ = q.shape
        q, k, v = (t.view(b, n, heads, -1).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
        a = (att @ v).transpose(1, 2).reshape(b, n, width)
        x = x + a @ w[p + "attn.out_proj.weight"].t() + w[p + "attn.out_proj.bias"]
        h = F.layer_norm(x, (width,), w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        h = h @ w[p + "mlp.c_fc.weight"].t() + w[p + "mlp.c_fc.bias"]
        x = x + (h * torch.sigmoid(1.702 * h)) @ w[p + "mlp.c_proj.weight"].t() + w[p + "mlp.c_proj.bias"]
        i += 1
    tokens = w["style_embedding"].shape[1]
    x = F.layer_norm(x[:, -tokens:], (width,), w["ln_post.weight"], w["ln_post.bias"])
    return x @ w["proj"]


def test_style_model_matches_reference_and_reads_sizes(tmp_path):
    sd = tiny_style_model(width=32, context=48, layers=3, tokens=8, seed=2)
    model = load_style_model(save(str(tmp_path / "style.safetensors"), sd))
    assert model.kind == "t2i_style"

    class Out:
        last_hidden_state = torch.randn(2, 257, 32, generator=torch.Generator().manual_seed(1))
    cond = model.get_cond(Out)
    assert cond.shape == (2, 8, 48)
    assert rel(cond, reference_style(sd, Out.last_hidden_state)) < 1e-5


def test_redux_and_unknown_style_files(tmp_path):
    g = torch.Generator().manual_seed(0)
    redux = {"redux_up.weight": torch.randn(24, 16, generator=g), "redux_up.bias": torch.zeros(24),
             "redux_down.weight": torch.randn(8, 24, generator=g), "redux_down.bias": torch.zeros(8)}
    model = load_style_model(redux)

    class Out:
        last_hidden_state = torch.randn(1, 5, 16, generator=g)
    expected = F.silu(Out.last_hidden_state @ redux["redux_up.weight"].t()) @ redux["redux_down.weight"].t()
    torch.testing.assert_close(model.get_cond(Out), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ModelFileError, match="not a style model.*looks like a CLIP vision model"):
        load_style_model(tiny_vision("vit_l"))
