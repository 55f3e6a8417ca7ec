"""Oracle case f_sd15_controlnet (../shared/oracle/refs): SD1.5 txt2img + ControlNetLoader +
ControlNetApply 0.5 on a scribble, on the full-size random-weight files, against ComfyUI
0.8.0's latent and image (README thresholds: latent rel_rms <= 1e-4, PSNR >= 60 dB).

Runs the nodes' own code in-process (the checkpoint and text-encoder nodes are not needed:
their models are loaded directly). ~1.5 minutes and ~4 GB of RAM on the CPU.
"""
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from oracle_models import require_oracle_model
from tiny_checkpoints import ORACLE_DIR

pytestmark = pytest.mark.slow
REFS = os.path.join(ORACLE_DIR, "refs")
CASE = os.path.join(REFS, "f_sd15_controlnet")


def _rel_rms(a, b):
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


def test_f_sd15_controlnet_matches_comfyui():
    import psutil
    if psutil.virtual_memory().available < 5 * 2 ** 30:
        pytest.skip("needs ~5 GB of free RAM")
    pytest.importorskip("models.clip")
    from safetensors.torch import load_file

    from models.checkpoint import load_checkpoint
    from models.clip import clip_from_checkpoint
    from models.controlnet_load import load_controlnet
    from models.model_patcher import ModelPatcher
    from nodes.controlnet import ControlNetApply, ControlNetLoader  # noqa: F401  (the node code path)
    from nodes.image_io import load_image_file
    from nodes.sampling import common_ksampler

    with open(os.path.join(CASE, "prompt.json")) as f:
        prompt = json.load(f)
    ckpt = require_oracle_model(prompt["4"]["inputs"]["ckpt_name"])
    cnet_path = require_oracle_model(prompt["14"]["inputs"]["control_net_name"])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        loaded = load_checkpoint(ckpt, weight_dtype=torch.float16, output_clip=False)
        model = ModelPatcher(loaded.model)
        clip = clip_from_checkpoint(ckpt)

        def encode(node):
            cond, pooled = clip.encode_from_tokens(clip.tokenize(prompt[node]["inputs"]["text"]), return_pooled=True)
            return [[cond, {"pooled_output": pooled}]]
        positive, negative = encode("6"), encode("7")
        image, _ = load_image_file(os.path.join(REFS, "inputs", prompt["15"]["inputs"]["image"]))
        cnet = load_controlnet(cnet_path)
        positive, = ControlNetApply().apply_controlnet(positive, cnet, image, prompt["16"]["inputs"]["strength"])
        ks = prompt["3"]["inputs"]
        size = prompt["5"]["inputs"]
        latent = {"samples": torch.zeros(1, 4, size["height"] // 8, size["width"] // 8)}
        out, = common_ksampler(model, ks["seed"], ks["steps"], ks["cfg"], ks["sampler_name"], ks["scheduler"],
                               positive, negative, latent, ks["denoise"])
        pixels = loaded.vae.decode(out["samples"])
    finally:
        torch.set_num_threads(threads)

    ref = load_file(os.path.join(CASE, "latent.latent"))["latent_tensor"]
    assert _rel_rms(out["samples"], ref) <= 1e-4
    img = np.clip(255.0 * pixels[0].cpu().numpy(), 0, 255).astype(np.uint8).astype(np.float64)
    ref_img = np.asarray(Image.open(os.path.join(CASE, "image.png")).convert("RGB"), dtype=np.float64)
    assert img.shape == ref_img.shape
    mse = float(np.mean((img - ref_img) ** 2))
    assert mse == 0 or 10 * math.log10(255.0 ** 2 / mse) >= 60.0
