"""The GPU runtime over HTTP, on a fake device: models placed by prompts, POST /free
unloading them as ComfyUI's does (and the next prompt giving the same image), and
GET /system_stats answering quickly while a prompt runs."""
import asyncio
import json
import os
import time

import pytest
import torch

from models import devices, folders, memory
from models.devices import FakeDevice
from server import cli
from tests.tiny_checkpoints import LAYOUT_DIR, write_tiny_checkpoint
from wsclient import run_prompt

pytestmark = pytest.mark.skipif(not os.path.isdir(LAYOUT_DIR), reason="oracle layouts not available")


@pytest.fixture(autouse=True)
def restore_runtime():
    yield
    devices.configure(cli.parse_args(["--cpu"]))
    memory.reset()


@pytest.fixture
def sd1(base_dir):
    write_tiny_checkpoint(str(base_dir / "models" / "checkpoints" / "tiny_sd1.safetensors"), "sd1", seed=3)
    folders._list_cache.clear()


def txt2img(seed=5, steps=2):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red cat", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                  "latent_image": ["4", 0], "seed": seed, "steps": steps, "cfg": 7.0,
                                                  "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "rt"}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }


async def fake_app(aiohttp_client, make_args, room_mb=1000, *flags):
    from server.app import create_app
    client = await aiohttp_client(create_app(make_args(*flags)))
    dev = FakeDevice(devices.INFERENCE_MINIMUM + devices.settings().reserved + int(room_mb * 1024 * 1024))
    devices.configure(make_args(*flags), device=dev)  # the app's flags, on a fake GPU
    memory.reset()
    return client, dev


async def run_ok(client, prompt, base_dir):
    from safetensors.torch import load_file
    _, events, history = await run_prompt(client, prompt, timeout=120)
    assert history["status"]["status_str"] == "success", [e for e in events if e[0] == "execution_error"]
    entry = history["outputs"]["7"]["latents"][0]
    return load_file(str(base_dir / "output" / entry["subfolder"] / entry["filename"]))["latent_tensor"]


async def wait_for(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def test_free_unloads_models_over_http(aiohttp_client, make_args, base_dir, sd1):
    client, dev = await fake_app(aiohttp_client, make_args)
    first = await run_ok(client, txt2img(), base_dir)
    names = sorted(e.name for e in memory.manager().loaded())
    assert names == ["CLIP", "DiffusionModel", "VAE"] and dev.resident > 0  # kept loaded: they fit

    await run_ok(client, txt2img(seed=6), base_dir)  # so that seed 5 is no longer a cached result

    resp = await client.post("/free", data=json.dumps({"unload_models": True}))
    assert resp.status == 200
    assert await wait_for(lambda: dev.resident == 0), memory.manager().events
    assert memory.manager().loaded() == []

    again = await run_ok(client, txt2img(), base_dir)  # the cached model objects reloaded: same image
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    assert dev.resident > 0

    resp = await client.post("/free", data=json.dumps({"free_memory": True}))
    assert resp.status == 200
    assert await wait_for(lambda: dev.resident == 0 and not memory.manager().entries)


async def test_models_evicted_when_the_budget_is_small(aiohttp_client, make_args, base_dir, sd1):
    """Room for the UNet but not for it and the text encoders: every prompt still runs, and
    the results equal those of a roomy device."""
    client, dev = await fake_app(aiohttp_client, make_args, 1000)
    roomy = await run_ok(client, txt2img(seed=9), base_dir)
    client, dev = await fake_app(aiohttp_client, make_args, 18)
    tight = await run_ok(client, txt2img(seed=9), base_dir)
    torch.testing.assert_close(tight, roomy, rtol=0, atol=0)
    assert ("unload", "CLIP") in memory.manager().events and dev.resident <= dev.budget


async def test_lowvram_flag_over_http_gives_the_same_latent(aiohttp_client, make_args, base_dir, sd1):
    client, _ = await fake_app(aiohttp_client, make_args, 1000)
    normal = await run_ok(client, txt2img(seed=11), base_dir)
    client, _ = await fake_app(aiohttp_client, make_args, 2, "--lowvram")
    low = await run_ok(client, txt2img(seed=11), base_dir)
    assert ("partial", "DiffusionModel") in memory.manager().events
    torch.testing.assert_close(low, normal, rtol=0, atol=0)


async def test_system_stats_stays_fast_while_a_prompt_runs(aiohttp_client, make_args, base_dir, sd1):
    client, _ = await fake_app(aiohttp_client, make_args)
    await run_ok(client, txt2img(seed=1), base_dir)  # load once
    resp = await client.post("/prompt", data=json.dumps({"prompt": txt2img(seed=2, steps=60)}))
    assert resp.status == 200
    times, running_seen = [], False
    for _ in range(40):
        t = time.perf_counter()
        stats = await (await client.get("/system_stats")).json()
        times.append(time.perf_counter() - t)
        queue = await (await client.get("/queue")).json()
        running_seen |= bool(queue["queue_running"])
        assert stats["devices"][0]["type"] == "cpu"
        if running_seen and not queue["queue_running"]:
            break
        await asyncio.sleep(0.02)
    assert running_seen
    times.sort()
    assert times[len(times) // 2] < 0.25 and times[-1] < 1.0, times
