"""/system_stats, /features, /embeddings, /models, /experiment/models over HTTP (API.md §6)."""
import base64
import io
import json
import os
import sys
from importlib import metadata

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from server.app_keys import HUB


def version_or_none(package):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


async def app_client(aiohttp_client, base_dir, *flags):
    from server import cli
    from server.app import create_app
    return await aiohttp_client(create_app(cli.parse_args(["--base-directory", str(base_dir), *flags])))


# -- /system_stats -------------------------------------------------------------------

async def test_system_stats_shape(client):
    r = await client.get("/system_stats")
    assert r.status == 200
    stats = await r.json()
    assert list(stats) == ["system", "devices"]
    s = stats["system"]
    assert list(s) == ["os", "ram_total", "ram_free", "comfyui_version", "required_frontend_version",
                       "installed_templates_version", "required_templates_version", "python_version",
                       "pytorch_version", "embedded_python", "argv"]
    assert s["os"] == sys.platform and s["comfyui_version"] == "0.8.0"
    assert s["ram_total"] > 0 and 0 < s["ram_free"] <= s["ram_total"]
    assert s["required_frontend_version"] == version_or_none("comfyui-frontend-package")
    assert s["installed_templates_version"] == version_or_none("comfyui-workflow-templates")
    assert s["required_templates_version"] == version_or_none("comfyui-workflow-templates")
    assert s["python_version"] == sys.version and s["pytorch_version"] == torch.__version__
    assert s["embedded_python"] is False and s["argv"] == sys.argv


async def test_system_stats_cpu_device(client):
    stats = await (await client.get("/api/system_stats")).json()
    assert len(stats["devices"]) == 1
    dev = stats["devices"][0]
    assert list(dev) == ["name", "type", "index", "vram_total", "vram_free", "torch_vram_total", "torch_vram_free"]
    assert dev["name"] == "cpu" and dev["type"] == "cpu" and dev["index"] is None
    assert dev["vram_total"] == dev["torch_vram_total"] == stats["system"]["ram_total"]
    assert dev["vram_free"] > 0 and dev["torch_vram_free"] > 0
    assert (await client.head("/system_stats")).status == 200


class FakeCuda:
    """torch.cuda as a one-GPU machine reports it, for the CUDA branch on a CPU-only host."""
    GiB = 1024 ** 3

    def __init__(self, monkeypatch):
        c = torch.cuda
        monkeypatch.setattr(c, "is_available", lambda: True)
        monkeypatch.setattr(c, "current_device", lambda: 0)
        monkeypatch.setattr(c, "mem_get_info", lambda dev=None: (60 * self.GiB, 80 * self.GiB))
        monkeypatch.setattr(c, "memory_stats", lambda dev=None: {
            "reserved_bytes.all.current": 6 * self.GiB, "active_bytes.all.current": 4 * self.GiB})
        monkeypatch.setattr(c, "get_device_name", lambda dev=None: "NVIDIA Fake 80GB")
        monkeypatch.setattr(c, "get_allocator_backend", lambda: "cudaMallocAsync")


async def test_system_stats_cuda_figures(aiohttp_client, base_dir, monkeypatch):
    FakeCuda(monkeypatch)
    c = await app_client(aiohttp_client, base_dir)
    dev = (await (await c.get("/system_stats")).json())["devices"][0]
    g = FakeCuda.GiB
    assert dev == {"name": "cuda:0 NVIDIA Fake 80GB : cudaMallocAsync", "type": "cuda", "index": 0,
                   "vram_total": 80 * g, "vram_free": 60 * g + 2 * g,  # driver free + (reserved - active)
                   "torch_vram_total": 6 * g, "torch_vram_free": 2 * g}


async def test_system_stats_cpu_flag_wins_over_cuda(aiohttp_client, base_dir, monkeypatch):
    FakeCuda(monkeypatch)
    c = await app_client(aiohttp_client, base_dir, "--cpu")
    assert (await (await c.get("/system_stats")).json())["devices"][0]["type"] == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
async def test_system_stats_real_cuda(aiohttp_client, base_dir):
    c = await app_client(aiohttp_client, base_dir)
    dev = (await (await c.get("/system_stats")).json())["devices"][0]
    free, total = torch.cuda.mem_get_info()
    assert dev["type"] == "cuda" and dev["index"] == torch.cuda.current_device()
    assert dev["name"].startswith(f"cuda:{dev['index']} {torch.cuda.get_device_name()} : ")
    assert dev["vram_total"] == total
    assert 0 < dev["vram_free"] <= total and 0 <= dev["torch_vram_free"] <= dev["torch_vram_total"]
    assert abs(dev["vram_free"] - dev["torch_vram_free"] - free) < 512 * 1024 * 1024


# -- /features -----------------------------------------------------------------------

async def test_features_match_the_websocket_flags(client):
    r = await client.get("/features")
    features = await r.json()
    assert features == client.server.app[HUB].server_features
    assert features["supports_preview_metadata"] is True
    assert features["max_upload_size"] == 100 * 1024 * 1024
    assert await (await client.get("/api/features")).json() == features


async def test_features_report_the_upload_limit(aiohttp_client, make_args):
    from server.app import create_app
    c = await aiohttp_client(create_app(make_args("--max-upload-size", "2")))
    assert (await (await c.get("/features")).json())["max_upload_size"] == 2 * 1024 * 1024


# -- /embeddings, /models ------------------------------------------------------------

@pytest.fixture
def model_tree(base_dir):
    models = base_dir / "models"
    ckpt = models / "checkpoints"
    (ckpt / "sub").mkdir(parents=True)
    save_file({"w": torch.zeros(1)}, str(ckpt / "sub" / "m.safetensors"))
    (ckpt / "a.ckpt").write_bytes(b"x" * 10)
    (ckpt / "notes.txt").write_text("not a model")
    (ckpt / ".hidden.safetensors").write_bytes(b"x")
    (ckpt / ".git").mkdir()
    (ckpt / ".git" / "x.safetensors").write_bytes(b"x")
    (models / "embeddings" / "neg").mkdir(parents=True)
    (models / "embeddings" / "easynegative.safetensors").write_bytes(b"x")
    (models / "embeddings" / "neg" / "bad.pt").write_bytes(b"x")
    (models / "unet").mkdir()
    (models / "unet" / "u.safetensors").write_bytes(b"x")
    (models / "configs").mkdir()
    (models / "configs" / "v1.yaml").write_text("model: {}")
    return models


async def test_embeddings(client, model_tree):
    r = await client.get("/embeddings")
    assert r.status == 200 and sorted(await r.json()) == ["easynegative", "neg/bad"]
    assert await (await client.get("/api/embeddings")).json() == await r.json()


async def test_models_lists_folder_keys(client):
    kinds = await (await client.get("/models")).json()
    from models import folders
    assert kinds == folders.model_kinds()
    assert kinds[:5] == ["checkpoints", "configs", "loras", "vae", "text_encoders"]
    for key in ("diffusion_models", "custom_nodes", "upscale_models", "audio_encoders"):
        assert key in kinds
    assert "unet" not in kinds and "clip" not in kinds


async def test_models_folder_files(client, model_tree):
    assert await (await client.get("/models/checkpoints")).json() == ["a.ckpt", "sub/m.safetensors"]
    assert await (await client.get("/api/models/diffusion_models")).json() == ["u.safetensors"]
    assert await (await client.get("/models/configs")).json() == ["v1.yaml"]
    assert await (await client.get("/models/loras")).json() == []
    r = await client.get("/models/unet")  # legacy aliases are not accepted here
    assert r.status == 404 and await r.read() == b""
    assert (await client.get("/models/nope")).status == 404
    assert (await client.post("/models/checkpoints")).status == 405


# -- /experiment/models --------------------------------------------------------------

async def test_experiment_models_folders(client, base_dir):
    folders_list = await (await client.get("/experiment/models")).json()
    names = [f["name"] for f in folders_list]
    assert "configs" not in names and "custom_nodes" not in names
    assert names[0] == "checkpoints"
    assert folders_list[0] == {"name": "checkpoints", "folders": [str(base_dir / "models" / "checkpoints")]}
    dm = next(f for f in folders_list if f["name"] == "diffusion_models")
    assert dm["folders"] == [str(base_dir / "models" / "unet"), str(base_dir / "models" / "diffusion_models")]


async def test_experiment_model_files(client, base_dir, model_tree):
    files = await (await client.get("/experiment/models/checkpoints")).json()
    assert sorted(f["name"] for f in files) == ["a.ckpt", "sub/m.safetensors"]
    a = next(f for f in files if f["name"] == "a.ckpt")
    st = os.stat(model_tree / "checkpoints" / "a.ckpt")
    assert a == {"name": "a.ckpt", "pathIndex": 0, "modified": st.st_mtime, "created": st.st_ctime, "size": 10}
    dm = await (await client.get("/api/experiment/models/diffusion_models")).json()
    assert [(f["name"], f["pathIndex"]) for f in dm] == [("u.safetensors", 0)]
    assert (await client.get("/experiment/models/unet")).status == 404
    assert (await client.get("/experiment/models/nope")).status == 404


async def test_experiment_model_files_path_index(client, base_dir, tmp_path_factory):
    from models import folders
    extra = tmp_path_factory.mktemp("extra_ckpts")
    (extra / "e.safetensors").write_bytes(b"x")
    (base_dir / "models" / "checkpoints").mkdir(parents=True)
    (base_dir / "models" / "checkpoints" / "d.safetensors").write_bytes(b"x")
    folders.add_model_folder_path("checkpoints", str(extra))
    files = await (await client.get("/experiment/models/checkpoints")).json()
    assert sorted((f["name"], f["pathIndex"]) for f in files) == [("d.safetensors", 0), ("e.safetensors", 1)]
    paths = await (await client.get("/experiment/models")).json()
    assert paths[0]["folders"] == [str(base_dir / "models" / "checkpoints"), str(extra)]


def image_bytes(fmt, color=(255, 0, 0)):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format=fmt)
    return buf.getvalue()


def webp_pixel(data):
    img = Image.open(io.BytesIO(data))
    assert img.format == "WEBP"
    return img.convert("RGB").getpixel((4, 4))


async def test_experiment_model_previews(client, base_dir):
    lora = base_dir / "models" / "loras"
    (lora / "sub").mkdir(parents=True)
    (lora / "sub" / "a.safetensors").write_bytes(b"x")
    (lora / "sub" / "a.png").write_bytes(image_bytes("PNG", (255, 0, 0)))
    (lora / "b.safetensors").write_bytes(b"x")
    (lora / "b.preview.jpeg").write_bytes(image_bytes("JPEG", (0, 0, 255)))
    cover = base64.b64encode(image_bytes("PNG", (0, 255, 0))).decode()
    save_file({"w": torch.zeros(1)}, str(lora / "c.safetensors"),
              metadata={"ssmd_cover_images": json.dumps([cover])})
    save_file({"w": torch.zeros(1)}, str(lora / "d.safetensors"))
    r = await client.get("/experiment/models/preview/loras/0/sub/a.safetensors")
    assert r.status == 200 and r.headers["Content-Type"] == "image/webp"
    assert webp_pixel(await r.read())[0] > 200
    r = await client.get("/api/experiment/models/preview/loras/0/b.safetensors")
    assert r.status == 200 and webp_pixel(await r.read())[2] > 200
    r = await client.get("/experiment/models/preview/loras/0/c.safetensors")
    assert r.status == 200 and webp_pixel(await r.read())[1] > 200
    assert (await client.head("/experiment/models/preview/loras/0/c.safetensors")).status == 200


@pytest.mark.parametrize("url", [
    "/experiment/models/preview/loras/0/d.safetensors",  # no preview anywhere
    "/experiment/models/preview/loras/0/missing.safetensors",
    "/experiment/models/preview/loras/1/d.safetensors",  # no second loras folder
    "/experiment/models/preview/loras/x/d.safetensors",
    "/experiment/models/preview/loras/-5/d.safetensors",
    "/experiment/models/preview/nope/0/d.safetensors",
    "/experiment/models/preview/loras/0/..%2F..%2F..%2Foutput%2Fsecret.safetensors",
    "/experiment/models/preview/loras/0/broken.safetensors",
])
async def test_experiment_model_preview_404s(client, base_dir, url):
    lora = base_dir / "models" / "loras"
    lora.mkdir(parents=True)
    save_file({"w": torch.zeros(1)}, str(lora / "d.safetensors"))
    (lora / "broken.safetensors").write_bytes(b"x")
    (lora / "broken.png").write_bytes(b"not an image")
    (base_dir / "output" / "secret.png").write_bytes(image_bytes("PNG"))
    (base_dir / "output" / "secret.safetensors").write_bytes(b"x")
    assert (await client.get(url)).status == 404
