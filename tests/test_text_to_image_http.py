"""Text-to-image over HTTP with tiny checkpoints in the real layouts: CheckpointLoaderSimple,
CLIPTextEncode(+SDXL), CLIPSetLastLayer, LoraLoader(ModelOnly), CLIPLoader/DualCLIPLoader,
KSampler and VAEDecode, as a user's workflow wires them."""
import os

import pytest
import torch
from safetensors.torch import save_file

from models import folders
from tests.tiny_checkpoints import LAYOUT_DIR, write_tiny_checkpoint
from wsclient import run_prompt

pytestmark = pytest.mark.skipif(not os.path.isdir(LAYOUT_DIR), reason="oracle layouts not available")


@pytest.fixture
def models_dir(base_dir):
    m = base_dir / "models"
    write_tiny_checkpoint(str(m / "checkpoints" / "tiny_sd1.safetensors"), "sd1", seed=3)
    write_tiny_checkpoint(str(m / "checkpoints" / "tiny_sdxl.safetensors"), "sdxl", seed=4)
    folders._list_cache.clear()
    return m


def txt2img(ckpt="tiny_sd1.safetensors", positive="a red cat", seed=5, model=("1", 0), clip=("1", 1), size=64):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": list(clip)}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": list(clip)}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": list(model), "positive": ["2", 0], "negative": ["3", 0],
                                                  "latent_image": ["4", 0], "seed": seed, "steps": 2, "cfg": 7.0,
                                                  "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "t2i"}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "t2i"}},
    }


def saved_latent(base_dir, history):
    from safetensors.torch import load_file
    entry = history["outputs"]["7"]["latents"][0]
    return load_file(str(base_dir / "output" / entry["subfolder"] / entry["filename"]))["latent_tensor"]


async def run_ok(client, prompt):
    resp, events, history = await run_prompt(client, prompt, timeout=120)
    assert "prompt_id" in resp, resp
    assert history["status"]["status_str"] == "success", [e for e in events if e[0] == "execution_error"]
    return history


async def test_sd1_txt2img_prompt_changes_and_seed_repeats(client, models_dir, base_dir):
    h1 = await run_ok(client, txt2img())
    img = h1["outputs"]["8"]["images"][0]
    assert (await client.get(f"/view?filename={img['filename']}&type=output")).status == 200
    lat1 = saved_latent(base_dir, h1)
    assert lat1.shape == (1, 4, 8, 8) and torch.isfinite(lat1).all()
    lat_again = saved_latent(base_dir, await run_ok(client, txt2img(seed=5, positive="a red cat ")))
    # a trailing space tokenizes the same: the same seed gives the same latent
    assert torch.equal(lat1, lat_again)
    lat_other = saved_latent(base_dir, await run_ok(client, txt2img(positive="a (red:1.5) cat")))
    assert not torch.equal(lat1, lat_other)


async def test_clip_set_last_layer_and_lora(client, models_dir, base_dir):
    base = saved_latent(base_dir, await run_ok(client, txt2img()))
    skip = txt2img(clip=("9", 0))
    skip["9"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["1", 1], "stop_at_clip_layer": -2}}
    assert not torch.equal(base, saved_latent(base_dir, await run_ok(client, skip)))

    # a kohya LoRA on one UNet projection and one text-encoder projection of the tiny model
    from safetensors.torch import load_file
    sd = load_file(str(models_dir / "checkpoints" / "tiny_sd1.safetensors"))
    unet_w = sd["model.diffusion_model.input_blocks.1.1.proj_in.weight"]
    te_w = sd["cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"]
    g = torch.Generator().manual_seed(0)
    lora = {}
    for name, w in (("lora_unet_input_blocks_1_1_proj_in", unet_w),
                    ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", te_w)):
        lora[name + ".lora_up.weight"] = torch.randn(w.shape[0], 2, generator=g).half()
        lora[name + ".lora_down.weight"] = torch.randn(2, *w.shape[1:], generator=g).half()
        lora[name + ".alpha"] = torch.tensor(2.0)
    (models_dir / "loras").mkdir()
    save_file(lora, str(models_dir / "loras" / "tiny_lora.safetensors"))
    folders._list_cache.clear()

    with_lora = txt2img(model=("10", 0), clip=("10", 1))
    with_lora["10"] = {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                                                             "lora_name": "tiny_lora.safetensors",
                                                             "strength_model": 1.0, "strength_clip": 1.0}}
    lat_lora = saved_latent(base_dir, await run_ok(client, with_lora))
    assert not torch.equal(base, lat_lora)
    # strength 0 on both is the plain model; the checkpoint's weights were restored in between
    with_lora["10"]["inputs"].update(strength_model=0.0, strength_clip=0.0)
    assert torch.equal(base, saved_latent(base_dir, await run_ok(client, with_lora)))
    model_only = txt2img(model=("11", 0))
    model_only["11"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": "tiny_lora.safetensors",
                                                                       "strength_model": 1.0}}
    lat_model_only = saved_latent(base_dir, await run_ok(client, model_only))
    assert not torch.equal(base, lat_model_only) and not torch.equal(lat_lora, lat_model_only)
    # and without the LoRA again: bit-identical to the first run (weights restored in place)
    assert torch.equal(base, saved_latent(base_dir, await run_ok(client, txt2img(seed=5, positive="a red cat  "))))


async def test_sdxl_text_encode_nodes(client, models_dir, base_dir):
    p = txt2img(ckpt="tiny_sdxl.safetensors")
    base = saved_latent(base_dir, await run_ok(client, p))
    p["2"] = {"class_type": "CLIPTextEncodeSDXL", "inputs": {
        "clip": ["1", 1], "width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0, "target_width": 1024,
        "target_height": 1024, "text_g": "a red cat", "text_l": "a red cat"}}
    # CLIPTextEncodeSDXL with the same text and ComfyUI's default sizes: the same conditioning
    # values as CLIPTextEncode, whose ADM falls back to the image size (8x8 latent * 8 = 64 here), so the
    # latents differ only through the size embedding.
    sized = saved_latent(base_dir, await run_ok(client, p))
    assert sized.shape == base.shape and not torch.equal(base, sized)
    p["2"]["inputs"].update(width=64, height=64, target_width=64, target_height=64)
    assert torch.equal(base, saved_latent(base_dir, await run_ok(client, p)))


async def test_standalone_text_encoders(client, models_dir, base_dir):
    from safetensors.torch import load_file
    te = models_dir / "text_encoders"
    te.mkdir()
    sd1 = load_file(str(models_dir / "checkpoints" / "tiny_sd1.safetensors"))
    prefix = "cond_stage_model.transformer."
    save_file({k[len(prefix):]: v for k, v in sd1.items() if k.startswith(prefix)}, str(te / "clip_l_tiny.safetensors"))
    folders._list_cache.clear()
    base = saved_latent(base_dir, await run_ok(client, txt2img()))
    p = txt2img(clip=("12", 0))
    p["12"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": "clip_l_tiny.safetensors", "type": "stable_diffusion"}}
    assert torch.equal(base, saved_latent(base_dir, await run_ok(client, p)))

    p["12"]["inputs"]["type"] = "wan"
    resp, events, history = await run_prompt(client, p, timeout=60)
    err = [d for t, d in events if t == "execution_error"][0]
    assert err["node_id"] == "12" and "not supported" in err["exception_message"]
    # the server keeps serving
    assert (await client.get("/queue")).status == 200


async def test_wrong_files_are_clear_errors(client, models_dir, base_dir):
    ck = models_dir / "checkpoints"
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(2, 2)}, str(ck / "a_lora.safetensors"))
    (ck / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    folders._list_cache.clear()
    for name, words in (("a_lora.safetensors", ""), ("broken.safetensors", "safetensors")):
        resp, events, history = await run_prompt(client, txt2img(ckpt=name), timeout=60)
        err = [d for t, d in events if t == "execution_error"][0]
        assert err["node_id"] == "1" and words in err["exception_message"]
    resp, _, _ = await run_prompt(client, txt2img(ckpt="missing.safetensors"))
    assert resp["error"]["type"] == "prompt_outputs_failed_validation"
    assert resp["node_errors"]["1"]["errors"][0]["type"] == "value_not_in_list"
