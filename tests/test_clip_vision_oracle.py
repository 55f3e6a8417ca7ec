"""Slow: the oracle's full-size CLIP vision G file (random weights in clip_vision_g's layout,
3.7 GB fp16). The oracle has no CLIP-vision component tensors, so this checks what ComfyUI 0.8.0
reported for the file (refs/model_detection.json: CLIPVisionModelProjection, 48 layers, image
size 224, every key loaded) and the full-width forward: the first encoder layer against the
float64 reference of test_clip_vision.py, outputs finite and repeatable, the revision ADM built
from its embeddings. About 4 GB of RAM; the SDXL seed case itself is not run here."""
import json
import os

import pytest
import torch

from models.clip_vision import clip_preprocess, load_clip_vision
from models.unclip import EmbeddingNoiseAugmentor, unclip_adm
from oracle_models import require_oracle_model
from test_clip_vision import rel
from tiny_checkpoints import ORACLE_DIR

pytestmark = pytest.mark.slow
NAME = "oracle_clip_vision_g_s5.safetensors"


def _oracle_image():
    from PIL import Image
    path = os.path.join(ORACLE_DIR, "refs", "inputs", "clipspace", "clipspace-mask-oracle.png")
    img = Image.open(path).convert("RGB")
    import numpy as np
    return torch.from_numpy(np.array(img).astype(np.float32) / 255.0)[None]


def test_full_size_clip_vision_g_loads_and_runs():
    torch.set_num_threads(2)
    path = require_oracle_model(NAME)
    with open(os.path.join(ORACLE_DIR, "refs", "model_detection.json")) as f:
        comfy = json.load(f)[NAME]
    model = load_clip_vision(path)
    cfg = model.config
    assert cfg.kind == "vit_bigg" and cfg.layers == comfy["layers"] and model.image_size == comfy["image_size"]
    assert (cfg.width, cfg.ffn, cfg.projection_dim, cfg.heads) == (1664, 8192, 1280, 16)
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        file_keys = set(f.keys())
    assert set(model.get_sd()) == file_keys  # nothing left unloaded, as ComfyUI's not_loaded_lines: []

    image = _oracle_image()
    out = model.encode_image(image)
    assert out.image_embeds.shape == (1, 1280) and out.last_hidden_state.shape == (1, 257, 1664)
    for t in (out.image_embeds, out.last_hidden_state, out.penultimate_hidden_states):
        assert torch.isfinite(t).all()
    again = model.encode_image(image)
    assert torch.equal(again.image_embeds, out.image_embeds)

    # the first layer at full width (16 heads of 104) against the float64 reference
    from test_clip_vision import reference_tower
    tower = model.model
    pixels = clip_preprocess(image)
    with torch.no_grad():
        x = tower.vision_model.pre_layrnorm(tower.vision_model.embeddings(pixels))
        first = tower.vision_model.encoder.layers[0](x)
    sd = {k: v for k, v in model.get_sd().items()
          if not k.startswith("vision_model.encoder.layers.") or k.split(".")[3] in ("0", "1")}
    _, ref_first, _ = reference_tower(sd, pixels)  # with two layers, "penultimate" is layer 0
    assert rel(first, ref_first) < 1e-5

    # revision: 1280-wide embeddings fit SDXL's augmentor
    adm = unclip_adm([{"clip_vision_output": out, "strength": 1.0, "noise_augmentation": 0.0}], "cpu",
                     EmbeddingNoiseAugmentor(1280), seed=764714814161513 - 10)
    assert adm.shape == (1, 2560) and torch.isfinite(adm).all()
