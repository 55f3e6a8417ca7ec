"""Model merging and saving over HTTP with tiny checkpoints: ModelMergeSimple/Subtract/Add/Blocks,
CLIPMerge*, CheckpointSave/ModelSave/CLIPSave/VAESave (files, layout, metadata, numbering), the
saved checkpoint loading back to the same latent, and the shared weights restored exactly after a
merged prompt. Expected weights are computed here from the files with ComfyUI's formula
(w1 * strength_model + strength_patch * w2, in fp32, rounded once to the stored dtype)."""
import json
import os
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from models import folders
from tests.tiny_checkpoints import LAYOUT_DIR, write_tiny_checkpoint
from wsclient import run_prompt

pytestmark = pytest.mark.skipif(not os.path.isdir(LAYOUT_DIR), reason="oracle layouts not available")

UNET = "model.diffusion_model."
TE = "cond_stage_model.transformer."


@pytest.fixture
def models_dir(base_dir):
    m = base_dir / "models"
    write_tiny_checkpoint(str(m / "checkpoints" / "a.safetensors"), "sd1", seed=3)
    write_tiny_checkpoint(str(m / "checkpoints" / "b.safetensors"), "sd1", seed=9)
    folders._list_cache.clear()
    return m


def ckpt(models_dir, name):
    return load_file(str(models_dir / "checkpoints" / name))


def graph(model=("1", 0), clip=("1", 1), seed=5):
    """Loaders for a and b (nodes 1, 2), text-to-image from `model`/`clip` with a's VAE."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red cat", "clip": list(clip)}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": list(clip)}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": list(model), "positive": ["3", 0], "negative": ["4", 0],
                                                  "latent_image": ["5", 0], "seed": seed, "steps": 2, "cfg": 7.0,
                                                  "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "merge"}},
    }


async def run_ok(client, prompt, extra=None):
    resp, events, history = await run_prompt(client, prompt, extra=extra, timeout=120)
    assert "prompt_id" in resp, resp
    assert history["status"]["status_str"] == "success", [d for t, d in events if t == "execution_error"]
    return history


async def latent(client, base_dir, prompt):
    h = await run_ok(client, prompt)
    entry = h["outputs"]["7"]["latents"][0]
    return load_file(str(base_dir / "output" / entry["subfolder"] / entry["filename"]))["latent_tensor"]


def mix(w1, w2, strength_patch, strength_model):
    return w1.float() * strength_model + strength_patch * w2.float()


def same(saved, expected_fp32):
    """Saved weights are the fp32 result, rounded to the dtype the model holds them in."""
    return torch.equal(saved, expected_fp32.to(saved.dtype))


def saved_files(base_dir, sub):
    d = base_dir / "output" / sub
    return sorted(os.listdir(d)) if d.is_dir() else []


async def test_merge_ratio_ends_equal_each_model_and_weights_are_restored(client, models_dir, base_dir):
    lat_a = await latent(client, base_dir, graph())
    lat_b = await latent(client, base_dir, graph(model=("2", 0)))
    assert not torch.equal(lat_a, lat_b)
    p = graph(model=("8", 0))
    p["8"] = {"class_type": "ModelMergeSimple", "inputs": {"model1": ["1", 0], "model2": ["2", 0], "ratio": 1.0}}
    assert torch.equal(await latent(client, base_dir, p), lat_a)
    p["8"]["inputs"]["ratio"] = 0.0
    assert torch.equal(await latent(client, base_dir, p), lat_b)
    p["8"]["inputs"]["ratio"] = 0.5
    lat_mid = await latent(client, base_dir, p)
    assert not torch.equal(lat_mid, lat_a) and not torch.equal(lat_mid, lat_b)
    # a's shared weights were patched for the merge and restored exactly; b's never touched
    assert torch.equal(await latent(client, base_dir, graph()), lat_a)
    assert torch.equal(await latent(client, base_dir, graph(model=("2", 0))), lat_b)


async def test_checkpoint_save_writes_merged_weights_and_loads_back(client, models_dir, base_dir):
    a, b = ckpt(models_dir, "a.safetensors"), ckpt(models_dir, "b.safetensors")
    p = graph(model=("8", 0), clip=("9", 0))
    p["8"] = {"class_type": "ModelMergeSimple", "inputs": {"model1": ["1", 0], "model2": ["2", 0], "ratio": 0.3}}
    p["9"] = {"class_type": "CLIPMergeSimple", "inputs": {"clip1": ["1", 1], "clip2": ["2", 1], "ratio": 0.25}}
    p["10"] = {"class_type": "CheckpointSave", "inputs": {"model": ["8", 0], "clip": ["9", 0], "vae": ["1", 2],
                                                         "filename_prefix": "checkpoints/merged"}}
    extra = {"extra_data": {"extra_pnginfo": {"workflow": {"nodes": [1, 2]}}}}
    h = await run_ok(client, p, extra)
    lat_merged = (load_file(str(base_dir / "output" / h["outputs"]["7"]["latents"][0]["filename"]))["latent_tensor"])
    assert saved_files(base_dir, "checkpoints") == ["merged_00001_.safetensors"]
    path = base_dir / "output" / "checkpoints" / "merged_00001_.safetensors"
    saved = load_file(str(path))
    for k, v in saved.items():
        if k.startswith(UNET):
            assert same(v, mix(a[k], b[k], 0.7, 0.3)), k
        elif k.startswith(TE) and "position_ids" not in k:
            assert same(v, mix(a[k], b[k], 0.75, 0.25)), k
        elif k.startswith("first_stage_model."):
            assert torch.equal(v, a[k]), k
    assert {k for k in a if k.startswith(UNET)} <= set(saved)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["prompt"]) == p and json.loads(meta["workflow"]) == {"nodes": [1, 2]}
    assert meta["modelspec.predict_key"] == "epsilon" and "modelspec.architecture" not in meta  # SD1: no modelspec

    # the saved file is an ordinary checkpoint: loaded by CheckpointLoaderSimple, the same latent
    shutil.copy(path, models_dir / "checkpoints" / "merged.safetensors")
    folders._list_cache.clear()
    q = graph()
    q["1"]["inputs"]["ckpt_name"] = "merged.safetensors"
    assert torch.equal(await latent(client, base_dir, q), lat_merged)

    # numbering continues
    await run_ok(client, p)
    assert saved_files(base_dir, "checkpoints") == ["merged_00001_.safetensors", "merged_00002_.safetensors"]


async def test_subtract_add_identities_and_own_patches_of_model2(client, models_dir, base_dir):
    a, b = ckpt(models_dir, "a.safetensors"), ckpt(models_dir, "b.safetensors")
    p = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
        "3": {"class_type": "ModelMergeSubtract", "inputs": {"model1": ["1", 0], "model2": ["2", 0], "multiplier": 0.5}},
        "4": {"class_type": "ModelMergeAdd", "inputs": {"model1": ["3", 0], "model2": ["2", 0]}},
        "5": {"class_type": "ModelMergeAdd", "inputs": {"model1": ["1", 0], "model2": ["1", 0]}},  # same model twice
        "6": {"class_type": "ModelSave", "inputs": {"model": ["3", 0], "filename_prefix": "diffusion_models/sub"}},
        "7": {"class_type": "ModelSave", "inputs": {"model": ["4", 0], "filename_prefix": "diffusion_models/subadd"}},
        "8": {"class_type": "ModelSave", "inputs": {"model": ["5", 0], "filename_prefix": "diffusion_models/double"}},
    }
    await run_ok(client, p)
    out = base_dir / "output" / "diffusion_models"
    sub = load_file(str(out / "sub_00001_.safetensors"))
    subadd = load_file(str(out / "subadd_00001_.safetensors"))
    double = load_file(str(out / "double_00001_.safetensors"))
    assert set(sub) == {k for k in a if k.startswith(UNET)}  # ModelSave: the UNet alone
    for k in sub:
        w1, w2 = a[k].float(), b[k].float()
        assert same(sub[k], 0.5 * w1 - 0.5 * w2), k
        # (w1 * 0.5 - 0.5 * w2) * 1 + w2 in fp32, rounded once
        assert same(subadd[k], 0.5 * w1 - 0.5 * w2 + w2), k
        assert same(double[k], 2 * w1), k


async def test_merge_blocks_and_clip_merges(client, models_dir, base_dir):
    a, b = ckpt(models_dir, "a.safetensors"), ckpt(models_dir, "b.safetensors")
    p = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
        "3": {"class_type": "ModelMergeBlocks", "inputs": {"model1": ["1", 0], "model2": ["2", 0],
                                                          "input": 1.0, "middle": 0.0, "out": 0.4}},
        "4": {"class_type": "ModelSave", "inputs": {"model": ["3", 0], "filename_prefix": "blocks"}},
        "5": {"class_type": "CLIPMergeSubtract", "inputs": {"clip1": ["1", 1], "clip2": ["2", 1], "multiplier": 2.0}},
        "6": {"class_type": "CLIPMergeAdd", "inputs": {"clip1": ["5", 0], "clip2": ["2", 1]}},
        "7": {"class_type": "CLIPSave", "inputs": {"clip": ["6", 0], "filename_prefix": "clip/te"}},
        "8": {"class_type": "VAESave", "inputs": {"vae": ["2", 2], "filename_prefix": "vae/v"}},
    }
    await run_ok(client, p)
    blocks = load_file(str(base_dir / "output" / "blocks_00001_.safetensors"))
    for k, v in blocks.items():
        key = k[len(UNET):]
        # longest matching prefix; "out" also matches output_blocks; others take the first ratio (input)
        ratio = 0.0 if key.startswith("middle_block") else 0.4 if key.startswith("out") else 1.0
        assert same(v, mix(a[k], b[k], 1.0 - ratio, ratio)), k
    assert saved_files(base_dir, "clip") == ["te_clip_l_00001_.safetensors"]
    te = load_file(str(base_dir / "output" / "clip" / "te_clip_l_00001_.safetensors"))
    for k, v in te.items():  # HF layout, no checkpoint prefix
        w1, w2 = a[TE + k].float(), b[TE + k].float()
        assert same(v, 2 * w1 - 2 * w2 + w2), k
    with safe_open(str(base_dir / "output" / "clip" / "te_clip_l_00001_.safetensors"), "pt") as f:
        assert f.metadata()["format"] == "pt"
    vae = load_file(str(base_dir / "output" / "vae" / "v_00001_.safetensors"))
    assert set(vae) == {k[len("first_stage_model."):] for k in b if k.startswith("first_stage_model.")}
    assert all(torch.equal(v, b["first_stage_model." + k]) for k, v in vae.items())

    # the saved VAE and text encoder load with the stand-alone loaders
    os.makedirs(models_dir / "vae", exist_ok=True)
    shutil.copy(base_dir / "output" / "vae" / "v_00001_.safetensors", models_dir / "vae" / "v.safetensors")
    folders._list_cache.clear()
    q = graph()
    q["7"] = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["9", 0]}}
    q["9"] = {"class_type": "VAELoader", "inputs": {"vae_name": "v.safetensors"}}
    q["10"] = {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}}
    await run_ok(client, q)


async def test_merge_sees_model2_lora_and_sdxl_modelspec(client, base_dir, models_dir):
    """model2's own patches (a LoRA) are part of its weights; an SDXL save carries modelspec keys."""
    write_tiny_checkpoint(str(models_dir / "checkpoints" / "xl.safetensors"), "sdxl", seed=4)
    xl = ckpt(models_dir, "xl.safetensors")
    w_key = "input_blocks.4.1.proj_in.weight"
    w = xl[UNET + w_key]
    g = torch.Generator().manual_seed(0)
    up, down = torch.randn(w.shape[0], 2, generator=g), torch.randn(2, *w.shape[1:], generator=g)
    (models_dir / "loras").mkdir()
    save_file({"lora_unet_input_blocks_4_1_proj_in.lora_up.weight": up,
               "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": down},
              str(models_dir / "loras" / "l.safetensors"))
    folders._list_cache.clear()
    p = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "xl.safetensors"}},
        "2": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": "l.safetensors",
                                                             "strength_model": 0.5}},
        "3": {"class_type": "ModelMergeSimple", "inputs": {"model1": ["1", 0], "model2": ["2", 0], "ratio": 0.0}},
        "4": {"class_type": "CheckpointSave", "inputs": {"model": ["3", 0], "clip": ["1", 1], "vae": ["1", 2],
                                                        "filename_prefix": "checkpoints/xl"}},
    }
    await run_ok(client, p)
    path = base_dir / "output" / "checkpoints" / "xl_00001_.safetensors"
    saved = load_file(str(path))
    lora_w = (w.float() + 0.5 * (up @ down.flatten(1)).reshape(w.shape))
    assert same(saved[UNET + w_key], lora_w)
    other = UNET + "input_blocks.1.0.in_layers.2.weight"
    assert same(saved[other], xl[other].float())
    # the public SDXL layout again (CLIP-G's unused logit_scale is not kept by comfyd's CLIP)
    assert set(saved) == set(xl) - {"conditioner.embedders.1.model.logit_scale"}
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    assert meta["modelspec.title"] == "xl 1" and meta["modelspec.sai_model_spec"] == "1.0.0"
    assert meta["modelspec.implementation"] == "sgm" and meta["modelspec.predict_key"] == "epsilon"


async def test_disable_metadata_and_object_info(aiohttp_client, make_args, models_dir, base_dir):
    from server.app import create_app
    client = await aiohttp_client(create_app(make_args("--disable-metadata")))
    info = (await (await client.get("/object_info/ModelMergeSimple")).json())["ModelMergeSimple"]
    assert info["python_module"] == "comfy_extras.nodes_model_merging"
    assert info["category"] == "advanced/model_merging"
    assert info["input"]["required"]["ratio"] == ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}]
    save = (await (await client.get("/object_info/CheckpointSave")).json())["CheckpointSave"]
    assert save["display_name"] == "Save Checkpoint" and save["output_node"] is True
    p = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
         "2": {"class_type": "ModelSave", "inputs": {"model": ["1", 0], "filename_prefix": "m"}}}
    await run_ok(client, p, {"extra_data": {"extra_pnginfo": {"workflow": {}}}})
    with safe_open(str(base_dir / "output" / "m_00001_.safetensors"), "pt") as f:
        meta = f.metadata() or {}
    assert "prompt" not in meta and "workflow" not in meta and meta.get("modelspec.predict_key") == "epsilon"


async def test_model_specific_block_nodes(client, models_dir, base_dir):
    a, b = ckpt(models_dir, "a.safetensors"), ckpt(models_dir, "b.safetensors")
    info = (await (await client.get("/object_info/ModelMergeSD1")).json())["ModelMergeSD1"]
    assert info["python_module"] == "comfy_extras.nodes_model_merging_model_specific"
    names = list(info["input"]["required"])
    assert len(names) == 2 + 2 + 12 + 3 + 12 + 1 and names[4] == "input_blocks.0." and names[-1] == "out."
    sdxl = (await (await client.get("/object_info/ModelMergeSDXL")).json())["ModelMergeSDXL"]
    assert "input_blocks.8" in sdxl["input"]["required"] and "input_blocks.9" not in sdxl["input"]["required"]
    ratios = {n: 1.0 for n in names[2:]}
    ratios.update({"input_blocks.4.": 0.0, "input_blocks.1.": 0.25, "out.": 0.5})
    p = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
         "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
         "3": {"class_type": "ModelMergeSD2", "inputs": {"model1": ["1", 0], "model2": ["2", 0], **ratios}},
         "4": {"class_type": "ModelSave", "inputs": {"model": ["3", 0], "filename_prefix": "sd1blocks"}}}
    await run_ok(client, p)
    saved = load_file(str(base_dir / "output" / "sd1blocks_00001_.safetensors"))
    for k, v in saved.items():
        key = k[len(UNET):]
        # "input_blocks.1." does not cover input_blocks.10/11 (the trailing dot)
        ratio = 0.0 if key.startswith("input_blocks.4.") else 0.25 if key.startswith("input_blocks.1.") \
            else 0.5 if key.startswith("out.") else 1.0
        assert same(v, mix(a[k], b[k], 1.0 - ratio, ratio)), k


def test_comfyui_patch_forms_from_custom_nodes():
    """Keys and values as ComfyUI custom nodes build them: "diffusion_model.<key>" strings,
    (diff,), ("diff", (diff,)), ("set", (w,)), get_key_patches lists; unknown keys ignored."""
    from types import SimpleNamespace

    from models.model_patcher import ModelPatcher
    lin = torch.nn.Linear(3, 2)
    base = lin.weight.detach().clone()
    mp = ModelPatcher(SimpleNamespace(diffusion_model=torch.nn.ModuleDict({"layer": lin})))
    d = torch.full((2, 3), 0.5)
    k = "diffusion_model.layer.weight"
    m = mp.clone()
    assert m.add_patches({k: (d,), "diffusion_model.nope.weight": (d,)}, 2.0) == [k]
    m.add_patches({k: ("diff", (d,))}, 1.0, 0.5)
    m.prepare_for_sampling()
    torch.testing.assert_close(lin.weight.detach(), (base + 2 * d) * 0.5 + d)
    s = mp.clone()
    s.add_patches({k: ("set", (torch.ones(2, 3),))})
    s.prepare_for_sampling()
    assert torch.equal(lin.weight.detach(), torch.ones(2, 3))
    # a ComfyUI-style key-patch list: [(weight, convert_func), (strength, value, strength_model, None, None)]
    other = torch.randn(2, 3)
    listed = [(other, lambda a, **kw: a), (0.5, (d,), 1.0, None, None)]
    c = mp.clone()
    c.add_patches({k: listed}, 0.25, 0.75)
    c.prepare_for_sampling()
    torch.testing.assert_close(lin.weight.detach(), base * 0.75 + 0.25 * (other + 0.5 * d))
    mp.prepare_for_sampling()  # no patches: the original weight, exactly
    assert torch.equal(lin.weight.detach(), base)
