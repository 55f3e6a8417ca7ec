"""ControlNet nodes over HTTP with tiny files: /object_info entries, loading from the
controlnet folder (and t2i_adapter), applying to conditionings, sampling with them."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from models import folders
from nodes import registry
from tiny_checkpoints import write_tiny_checkpoint
from tiny_controlnets import tiny_controlnet, tiny_t2i_adapter, write
from wsclient import run_prompt

torch.set_num_threads(1)
RESULTS: dict = {}


class CNTestConditioning:
    """A seeded random CONDITIONING (stands in for a text encoder)."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0}), "width": ("INT", {"default": 48})}}
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "run"

    def run(self, seed, width):
        g = torch.Generator().manual_seed(seed)
        return ([[torch.randn(1, 77, width, generator=g), {}]],)


class CNTestCapture:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "name": ("STRING", {"default": "x"})}}
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, samples, name):
        RESULTS[name] = samples["samples"].clone()
        return {}


@pytest.fixture
def cn_nodes(base_dir):
    registry.register({"T_CNCond": CNTestConditioning, "T_CNCapture": CNTestCapture}, python_module="custom_nodes.test")
    RESULTS.clear()
    models = base_dir / "models"
    write_tiny_checkpoint(str(models / "diffusion_models" / "tiny_sd1.safetensors"), "sd1", seed=1)
    write(str(models / "controlnet" / "cn_sd1.safetensors"), tiny_controlnet("sd1"))
    write(str(models / "controlnet" / "cn_sd1_b.safetensors"), tiny_controlnet("sd1", seed=8))
    write(str(models / "t2i_adapter" / "t2i_canny.safetensors"), tiny_t2i_adapter("full"))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(base_dir / "input" / "hint.png")
    folders._list_cache.clear()  # listings are cached for a second; these files are new
    yield
    for name in ("T_CNCond", "T_CNCapture"):
        registry.NODE_CLASS_MAPPINGS.pop(name, None)


def graph(apply: dict, name="x"):
    """UNET + two random conds + a hint image -> `apply` nodes -> 2 KSampler steps -> capture."""
    g = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_sd1.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "T_CNCond", "inputs": {"seed": 1, "width": 48}},
        "3": {"class_type": "T_CNCond", "inputs": {"seed": 2, "width": 48}},
        "4": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "cn_sd1.safetensors"}},
        "5": {"class_type": "LoadImage", "inputs": {"image": "hint.png"}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "8": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 3, "steps": 2, "cfg": 4.0,
                                                   "sampler_name": "euler", "scheduler": "normal",
                                                   "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["7", 0], "denoise": 1.0}},
        "9": {"class_type": "T_CNCapture", "inputs": {"samples": ["8", 0], "name": name}},
    }
    g.update(apply)
    if "6" in apply:
        advanced = apply["6"]["class_type"] == "ControlNetApplyAdvanced"
        g["8"]["inputs"]["positive"] = ["6", 0]
        g["8"]["inputs"]["negative"] = ["6", 1] if advanced else ["3", 0]
    return g


def advanced(strength=1.0, start=0.0, end=1.0, cnet=("4", 0)):
    return {"6": {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["2", 0], "negative": ["3", 0], "control_net": list(cnet), "image": ["5", 0],
        "strength": strength, "start_percent": start, "end_percent": end}}}


async def run(client, prompt):
    data, events, hist = await run_prompt(client, prompt, timeout=120)
    assert "execution_success" in [t for t, _ in events], (data, [e for e in events if e[0] == "execution_error"])
    return hist


async def test_object_info_matches_comfyui(client):
    info = await (await client.get("/object_info")).json()
    loader = info["ControlNetLoader"]
    assert loader["display_name"] == "Load ControlNet Model" and loader["category"] == "loaders"
    assert loader["output"] == ["CONTROL_NET"] and loader["python_module"] == "nodes"
    diff = info["DiffControlNetLoader"]
    assert diff["display_name"] == "Load ControlNet Model (diff)"
    assert list(diff["input"]["required"]) == ["model", "control_net_name"]
    old = info["ControlNetApply"]
    assert old["display_name"] == "Apply ControlNet (OLD)" and old["deprecated"] is True
    assert old["category"] == "conditioning/controlnet"
    assert old["input"]["required"]["strength"] == ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}]
    adv = info["ControlNetApplyAdvanced"]
    assert adv["display_name"] == "Apply ControlNet" and adv["output_name"] == ["positive", "negative"]
    assert list(adv["input"]["required"]) == ["positive", "negative", "control_net", "image", "strength",
                                              "start_percent", "end_percent"]
    assert adv["input"]["required"]["end_percent"] == ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}]
    assert adv["input"]["optional"] == {"vae": ["VAE"]}
    union = info["SetUnionControlNetType"]
    assert union["python_module"] == "comfy_extras.nodes_controlnet" and union["category"] == "conditioning/controlnet"
    assert union["input"]["required"]["type"][1]["options"][:3] == ["auto", "openpose", "depth"]
    assert union["output"] == ["CONTROL_NET"]


async def test_loader_lists_controlnet_and_t2i_adapter_folders(client, cn_nodes):
    info = await (await client.get("/object_info/ControlNetLoader")).json()
    names = info["ControlNetLoader"]["input"]["required"]["control_net_name"][0]
    assert names == ["cn_sd1.safetensors", "cn_sd1_b.safetensors", "t2i_canny.safetensors"]


async def test_controlnet_steers_sampling_and_strength_zero_is_a_no_op(client, cn_nodes):
    await run(client, graph({}, "plain"))
    await run(client, graph(advanced(0.0), "zero"))
    await run(client, graph(advanced(1.0), "one"))
    assert torch.equal(RESULTS["zero"], RESULTS["plain"])
    assert (RESULTS["one"] - RESULTS["plain"]).abs().max() > 1e-3


async def test_old_apply_controls_the_negative_like_advanced(client, cn_nodes):
    old = {"6": {"class_type": "ControlNetApply", "inputs": {"conditioning": ["2", 0], "control_net": ["4", 0],
                                                             "image": ["5", 0], "strength": 0.8}}}
    await run(client, graph(old, "old"))
    await run(client, graph(advanced(0.8), "adv"))
    await run(client, graph(advanced(0.8, 0.0, 0.5), "half"))
    torch.testing.assert_close(RESULTS["old"], RESULTS["adv"], atol=1e-5, rtol=1e-5)
    assert (RESULTS["half"] - RESULTS["adv"]).abs().max() > 1e-4  # the second step ran without control


async def test_two_controlnets_chain_and_t2i_adapter_loads(client, cn_nodes):
    first = advanced(0.6)
    chain = {**first, "10": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "cn_sd1_b.safetensors"}},
             "11": {"class_type": "ControlNetApplyAdvanced", "inputs": {
                 "positive": ["6", 0], "negative": ["6", 1], "control_net": ["10", 0], "image": ["5", 0],
                 "strength": 0.4, "start_percent": 0.0, "end_percent": 1.0}}}
    g = graph(chain, "chain")
    g["8"]["inputs"]["positive"], g["8"]["inputs"]["negative"] = ["11", 0], ["11", 1]
    await run(client, g)
    await run(client, graph(advanced(0.6), "first"))
    assert (RESULTS["chain"] - RESULTS["first"]).abs().max() > 1e-4

    t2i = graph(advanced(1.0, cnet=("12", 0)), "t2i")
    t2i["12"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "t2i_canny.safetensors"}}
    await run(client, t2i)
    await run(client, graph({}, "plain"))
    assert (RESULTS["t2i"] - RESULTS["plain"]).abs().max() > 1e-4


async def test_diff_loader_and_bad_files(client, cn_nodes, base_dir):
    g = graph(advanced(1.0, cnet=("12", 0)), "diff")
    g["12"] = {"class_type": "DiffControlNetLoader", "inputs": {"model": ["1", 0], "control_net_name": "cn_sd1.safetensors"}}
    await run(client, g)  # a plain ControlNet through the diff loader is loaded as it is
    await run(client, graph(advanced(1.0), "one"))
    assert torch.equal(RESULTS["diff"], RESULTS["one"])

    write(str(base_dir / "models" / "controlnet" / "junk.safetensors"), {"foo.weight": torch.zeros(2)})
    folders._list_cache.clear()
    bad = graph(advanced(1.0), "bad")
    bad["4"]["inputs"]["control_net_name"] = "junk.safetensors"
    _, events, _ = await run_prompt(client, bad, timeout=60)
    err = dict(events)["execution_error"]
    assert err["node_type"] == "ControlNetLoader"
    assert "not a ControlNet, Control-LoRA or T2I-Adapter" in err["exception_message"]

    missing = graph(advanced(1.0), "missing")
    missing["4"]["inputs"]["control_net_name"] = "nope.safetensors"
    r = await client.post("/prompt", data=json.dumps({"prompt": missing}))
    assert r.status == 400
    assert "control_net_name" in json.dumps(await r.json())
