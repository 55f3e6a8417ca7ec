"""InpaintModelConditioning over HTTP on tiny checkpoints: a 9-channel inpainting UNet gets the
greyed-out image and the mask through its concat channels, and the noise mask keeps the
unmasked part of the latent."""
import os

import pytest
import torch

from models import folders
from tests.tiny_checkpoints import LAYOUT_DIR, write_tiny_checkpoint
from wsclient import run_prompt

pytestmark = pytest.mark.skipif(not os.path.isdir(LAYOUT_DIR), reason="oracle layouts not available")


def inpaint_prompt(ckpt, noise_mask=True, mask_value=1.0):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyImage", "inputs": {"width": 68, "height": 64, "batch_size": 1, "color": 0x8040C0}},
        "5": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 68, "height": 64}},
        "6": {"class_type": "SolidMask", "inputs": {"value": mask_value, "width": 34, "height": 64}},
        "7": {"class_type": "MaskComposite", "inputs": {"destination": ["5", 0], "source": ["6", 0], "x": 34, "y": 0,
                                                       "operation": "add"}},
        "8": {"class_type": "InpaintModelConditioning", "inputs": {
            "positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2], "pixels": ["4", 0], "mask": ["7", 0],
            "noise_mask": noise_mask}},
        "9": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["8", 0], "negative": ["8", 1],
                                                  "latent_image": ["8", 2], "seed": 3, "steps": 2, "cfg": 5.0,
                                                  "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "10": {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": "inp"}},
        "11": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "12": {"class_type": "SaveLatent", "inputs": {"samples": ["11", 0], "filename_prefix": "orig"}},
        "13": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 2], "filename_prefix": "cond"}},
    }


def latent(base_dir, history, node):
    from safetensors.torch import load_file
    e = history["outputs"][node]["latents"][0]
    return load_file(str(base_dir / "output" / e["subfolder"] / e["filename"]))["latent_tensor"]


async def run(client, prompt):
    resp, events, history = await run_prompt(client, prompt, timeout=120)
    assert history and history["status"]["status_str"] == "success", events
    return history


@pytest.fixture
def ckpts(base_dir):
    write_tiny_checkpoint(str(base_dir / "models" / "checkpoints" / "inpaint.safetensors"), "sd1_inpaint", seed=2)
    write_tiny_checkpoint(str(base_dir / "models" / "checkpoints" / "plain.safetensors"), "sd1", seed=2)
    folders._list_cache.clear()


async def test_inpainting_unet_with_noise_mask(client, ckpts, base_dir):
    h = await run(client, inpaint_prompt("inpaint.safetensors"))
    out, orig, given = latent(base_dir, h, "10"), latent(base_dir, h, "12"), latent(base_dir, h, "13")
    # the latent handed on is the encoding of the whole, uncropped original image
    assert torch.equal(given, orig) and orig.shape == (1, 4, 8, 8)
    # left of the mask (away from its bilinear edge) the final latent is the original one
    assert torch.allclose(out[..., :3], orig[..., :3], atol=1e-4)
    assert not torch.allclose(out[..., 6:], orig[..., 6:], atol=1e-2)
    # the conditioning reaches the 9-channel UNet: another mask changes the result inside
    h2 = await run(client, inpaint_prompt("inpaint.safetensors", mask_value=0.4))
    assert not torch.equal(latent(base_dir, h2, "10"), out)


async def test_without_noise_mask_and_on_a_plain_model(client, ckpts, base_dir):
    h = await run(client, inpaint_prompt("inpaint.safetensors", noise_mask=False))
    out, orig = latent(base_dir, h, "10"), latent(base_dir, h, "12")
    assert not torch.allclose(out[..., :3], orig[..., :3], atol=1e-2)  # everything was resampled
    # a 4-channel model ignores the concat values; the noise mask still protects the left side
    h = await run(client, inpaint_prompt("plain.safetensors"))
    assert torch.allclose(latent(base_dir, h, "10")[..., :3], latent(base_dir, h, "12")[..., :3], atol=1e-4)


def test_grey_out_crops_to_multiples_of_eight_and_centres():
    from nodes.inpaint import grey_out_masked
    pixels = torch.rand(1, 19, 21, 3)
    mask = torch.zeros(1, 1, 19, 21)
    mask[..., 10:, :] = 1.0
    out, m = grey_out_masked(pixels, mask)
    assert out.shape == (1, 16, 16, 3) and m.shape == (1, 1, 16, 16)
    top, left = 1, 2  # (19 % 8) // 2, (21 % 8) // 2
    assert torch.equal(out[:, :9], pixels[:, top:top + 9, left:left + 16])
    assert torch.all(out[:, 9:] == 0.5)
