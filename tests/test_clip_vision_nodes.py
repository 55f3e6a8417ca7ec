"""CLIP vision, unCLIP and style-model nodes over HTTP with tiny files in the real layouts:
/object_info entries, CLIPVisionEncode without `crop` (old workflows such as the seed's), SDXL
revision through ConditioningZeroOut and two unCLIPConditionings, unCLIPCheckpointLoader on an
SD2.1-unCLIP checkpoint, StyleModelApply, and the errors users see."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from models import folders
from models.clip_vision import load_clip_vision
from nodes import registry
from tiny_checkpoints import LAYOUT_DIR, write_tiny_checkpoint
from tiny_clip_vision import save, tiny_style_model, tiny_unclip_checkpoint, tiny_vision, to_openclip
from wsclient import run_prompt

pytestmark = pytest.mark.skipif(not os.path.isdir(LAYOUT_DIR), reason="oracle layouts not available")
torch.set_num_threads(1)
CAPTURED: dict = {}


class CaptureAny:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*",), "name": ("STRING", {"default": "x"})}}
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def VALIDATE_INPUTS(cls, input_types):
        return True

    def run(self, value, name):
        CAPTURED[name] = value
        return {}


@pytest.fixture
def files(base_dir):
    registry.register({"T_CVCapture": CaptureAny}, python_module="custom_nodes.test")
    CAPTURED.clear()
    m = base_dir / "models"
    write_tiny_checkpoint(str(m / "checkpoints" / "sd_xl_base_1.0.safetensors"), "sdxl", seed=4)
    write_tiny_checkpoint(str(m / "checkpoints" / "tiny_sd1.safetensors"), "sd1", seed=3)
    save(str(m / "checkpoints" / "sd21-unclip-h.safetensors"), tiny_unclip_checkpoint(seed=5))
    save(str(m / "clip_vision" / "clip_vision_g.safetensors"), tiny_vision("vit_bigg", seed=6))
    save(str(m / "clip_vision" / "vit_l_openclip.safetensors"), to_openclip(tiny_vision("vit_l", seed=7)))
    save(str(m / "style_models" / "t2i_style.safetensors"), tiny_style_model(width=32, context=48, seed=8))
    write_tiny_checkpoint(str(m / "clip_vision" / "not_vision.safetensors"), "sd1", seed=1)
    rng = np.random.default_rng(0)
    (base_dir / "input" / "clipspace").mkdir()
    Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(base_dir / "input" / "clipspace" / "a.png")
    Image.fromarray(rng.integers(0, 255, (80, 50, 3), dtype=np.uint8)).save(base_dir / "input" / "b.png")
    folders._list_cache.clear()
    yield m
    registry.NODE_CLASS_MAPPINGS.pop("T_CVCapture", None)


async def run_ok(client, prompt):
    resp, events, history = await run_prompt(client, prompt, timeout=120)
    assert "prompt_id" in resp, resp
    assert history["status"]["status_str"] == "success", [e for e in events if e[0] == "execution_error"]
    return history


def revision(crop=..., strengths=(1.0, 0.75), seed=11, vision_image=("34", 0)):
    """The seed workflow's revision part on the tiny SDXL checkpoint, captured latent as "latent"."""
    encode = {"clip_vision": ["39", 0], "image": list(vision_image)}
    if crop is not ...:
        encode["crop"] = crop
    return {
        "40": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["40", 1]}},
        "42": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["6", 0]}},
        "39": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "clip_vision_g.safetensors"}},
        "34": {"class_type": "LoadImage", "inputs": {"image": "clipspace/a.png [input]"}},
        "38": {"class_type": "LoadImage", "inputs": {"image": "b.png"}},
        "13": {"class_type": "CLIPVisionEncode", "inputs": dict(encode)},
        "36": {"class_type": "CLIPVisionEncode", "inputs": {**encode, "image": ["38", 0]}},
        "19": {"class_type": "unCLIPConditioning", "inputs": {"conditioning": ["42", 0], "clip_vision_output": ["13", 0],
                                                              "strength": strengths[0], "noise_augmentation": 0}},
        "37": {"class_type": "unCLIPConditioning", "inputs": {"conditioning": ["19", 0], "clip_vision_output": ["36", 0],
                                                              "strength": strengths[1], "noise_augmentation": 0}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": 2, "cfg": 5, "sampler_name": "euler",
                                                  "scheduler": "karras", "denoise": 1, "model": ["40", 0],
                                                  "positive": ["37", 0], "negative": ["6", 0], "latent_image": ["5", 0]}},
        "50": {"class_type": "T_CVCapture", "inputs": {"value": ["3", 0], "name": "latent"}},
        "51": {"class_type": "T_CVCapture", "inputs": {"value": ["13", 0], "name": "vision_a"}},
        "52": {"class_type": "T_CVCapture", "inputs": {"value": ["37", 0], "name": "positive"}},
    }


async def test_object_info_as_comfyui(client):
    info = await (await client.get("/object_info")).json()
    enc = info["CLIPVisionEncode"]
    assert enc["input"] == {"required": {"clip_vision": ["CLIP_VISION"], "image": ["IMAGE"], "crop": [["center", "none"]]}}
    assert enc["input_order"] == {"required": ["clip_vision", "image", "crop"]}
    assert enc["display_name"] == "CLIP Vision Encode" and enc["category"] == "conditioning"
    assert enc["output"] == ["CLIP_VISION_OUTPUT"] and enc["python_module"] == "nodes"
    assert set(enc) == set(info["CLIPVisionLoader"])  # the same V1 fields as any other node
    loader = info["CLIPVisionLoader"]
    assert loader["display_name"] == "Load CLIP Vision" and loader["output"] == ["CLIP_VISION"]
    un = info["unCLIPConditioning"]
    assert un["input"]["required"]["strength"] == ["FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}]
    assert un["input"]["required"]["noise_augmentation"] == ["FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}]
    style = info["StyleModelApply"]
    assert style["display_name"] == "Apply Style Model" and style["category"] == "conditioning/style_model"
    assert style["input"]["required"]["strength_type"] == [["multiply", "attn_bias"]]
    assert info["StyleModelLoader"]["display_name"] == "Load Style Model"
    assert info["unCLIPCheckpointLoader"]["output"] == ["MODEL", "CLIP", "VAE", "CLIP_VISION"]


async def test_loaders_list_their_folders(client, files):
    info = await (await client.get("/object_info/CLIPVisionLoader")).json()
    assert info["CLIPVisionLoader"]["input"]["required"]["clip_name"][0] == [
        "clip_vision_g.safetensors", "not_vision.safetensors", "vit_l_openclip.safetensors"]
    info = await (await client.get("/object_info/StyleModelLoader")).json()
    assert info["StyleModelLoader"]["input"]["required"]["style_model_name"][0] == ["t2i_style.safetensors"]


async def test_revision_workflow_without_crop_runs_as_center(client, files, base_dir):
    await run_ok(client, revision())
    lat_default, vision_default = CAPTURED["latent"]["samples"], CAPTURED["vision_a"]
    positive = CAPTURED["positive"]
    assert len(positive) == 1 and [e["strength"] for e in positive[0][1]["unclip_conditioning"]] == [1.0, 0.75]
    assert torch.count_nonzero(positive[0][0]) == 0  # zeroed text context, unCLIP entries kept
    await run_ok(client, revision(crop="center"))
    assert torch.equal(CAPTURED["latent"]["samples"], lat_default)
    await run_ok(client, revision(crop="none"))
    assert not torch.equal(CAPTURED["vision_a"].image_embeds, vision_default.image_embeds)
    assert not torch.equal(CAPTURED["latent"]["samples"], lat_default)
    # the embeddings are those of the model used directly on the loaded image
    image = torch.from_numpy(np.array(Image.open(base_dir / "input" / "clipspace" / "a.png")).astype(np.float32) / 255)[None]
    direct = load_clip_vision(str(files / "clip_vision" / "clip_vision_g.safetensors")).encode_image(image, crop=True)
    torch.testing.assert_close(vision_default.image_embeds, direct.image_embeds)
    assert vision_default.last_hidden_state.shape == (1, 257, 64)
    assert vision_default["penultimate_hidden_states"].shape == (1, 257, 64)


async def test_revision_changes_the_result_and_repeats(client, files):
    await run_ok(client, revision())
    first = CAPTURED["latent"]["samples"]
    await run_ok(client, revision(strengths=(1.0, 0.0)))  # strength 0 passes the conditioning through
    one_entry = CAPTURED["latent"]["samples"]
    assert len(CAPTURED["positive"][0][1]["unclip_conditioning"]) == 1
    assert not torch.allclose(one_entry, first)
    await run_ok(client, revision(seed=12))
    assert not torch.allclose(CAPTURED["latent"]["samples"], first)
    await run_ok(client, revision(seed=11))  # sampled again after other prompts: the same latent
    assert torch.equal(CAPTURED["latent"]["samples"], first)


async def test_unclip_checkpoint_loader_gives_its_vision_model(client, files):
    prompt = {
        "1": {"class_type": "unCLIPCheckpointLoader", "inputs": {"ckpt_name": "sd21-unclip-h.safetensors"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "b.png"}},
        "3": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["1", 3], "image": ["2", 0], "crop": "center"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a house", "clip": ["1", 1]}},
        "5": {"class_type": "unCLIPConditioning", "inputs": {"conditioning": ["4", 0], "clip_vision_output": ["3", 0],
                                                             "strength": 1.0, "noise_augmentation": 0.1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "KSampler", "inputs": {"seed": 3, "steps": 2, "cfg": 7, "sampler_name": "euler",
                                                  "scheduler": "normal", "denoise": 1, "model": ["1", 0],
                                                  "positive": ["5", 0], "negative": ["6", 0], "latent_image": ["7", 0]}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "unclip"}},
        "11": {"class_type": "T_CVCapture", "inputs": {"value": ["3", 0], "name": "vision"}},
    }
    history = await run_ok(client, prompt)
    assert history["outputs"]["10"]["images"][0]["filename"].startswith("unclip")
    assert CAPTURED["vision"].image_embeds.shape == (1, 64)


async def test_style_model_apply_multiply_and_attn_bias(client, files):
    def prompt(strength, kind):
        return {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
            "3": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "vit_l_openclip.safetensors"}},
            "4": {"class_type": "LoadImage", "inputs": {"image": "b.png"}},
            "5": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["3", 0], "image": ["4", 0], "crop": "none"}},
            "6": {"class_type": "StyleModelLoader", "inputs": {"style_model_name": "t2i_style.safetensors"}},
            "7": {"class_type": "StyleModelApply", "inputs": {"conditioning": ["2", 0], "style_model": ["6", 0],
                                                              "clip_vision_output": ["5", 0], "strength": strength,
                                                              "strength_type": kind}},
            "8": {"class_type": "T_CVCapture", "inputs": {"value": ["7", 0], "name": f"{kind}{strength}"}},
            "9": {"class_type": "T_CVCapture", "inputs": {"value": ["2", 0], "name": "text"}},
        }
    await run_ok(client, prompt(1.0, "multiply"))
    await run_ok(client, prompt(0.5, "multiply"))
    await run_ok(client, prompt(0.5, "attn_bias"))
    text = CAPTURED["text"][0][0]
    full, half, bias = (CAPTURED[k][0] for k in ("multiply1.0", "multiply0.5", "attn_bias0.5"))
    assert full[0].shape == (1, text.shape[1] + 8, 48)
    assert torch.equal(full[0][:, :text.shape[1]], text)
    torch.testing.assert_close(half[0][:, text.shape[1]:], full[0][:, text.shape[1]:] * 0.5)
    assert "attention_mask" not in full[1] and "attention_mask" not in half[1]
    mask = bias[1]["attention_mask"]
    n = text.shape[1]
    assert mask.shape == (1, n + 8 + 1, n + 8 + 1) and mask.dtype == torch.float16
    assert torch.allclose(mask[:, :n, n:n + 8].float(), torch.log(torch.tensor(0.5)), atol=1e-3)
    assert torch.count_nonzero(mask[:, :, :n]) == 0
    assert torch.equal(bias[0], full[0])  # attn_bias leaves the tokens unscaled


async def test_errors(client, files):
    bad = {"1": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "not_vision.safetensors"}},
           "2": {"class_type": "T_CVCapture", "inputs": {"value": ["1", 0], "name": "v"}}}
    resp, events, history = await run_prompt(client, bad, timeout=60)
    errors = [d for t, d in events if t == "execution_error"]
    assert errors and "clip vision file is invalid" in errors[0]["exception_message"]
    assert "not a CLIP vision model" in errors[0]["exception_message"]
    wrong_crop = revision(crop="left")
    resp = await client.post("/prompt", json={"prompt": wrong_crop})
    body = await resp.json()
    assert resp.status == 400
    assert body["node_errors"]["13"]["errors"][0]["type"] == "value_not_in_list"
