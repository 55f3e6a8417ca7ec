"""System and model listings: /system_stats, /features, /embeddings, /models, /experiment/models
(API.md §6)."""
from __future__ import annotations

import base64
import io
import json
import os
import sys
from importlib import metadata

import psutil
import torch
from aiohttp import web
from PIL import Image

from models import folders
from server.app_keys import ARGS, HUB

routes = web.RouteTableDef()

COMFYUI_VERSION = "0.8.0"
REQUIRED_FRONTEND = "1.35.9"
REQUIRED_TEMPLATES = "0.7.67"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


def _version(package: str):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def device_stats(use_cpu: bool) -> dict:
    if not use_cpu and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
        free, total = torch.cuda.mem_get_info(dev)
        stats = torch.cuda.memory_stats(dev)
        reserved = stats.get("reserved_bytes.all.current", 0)
        active = stats.get("active_bytes.all.current", 0)
        allocator = "cudaMallocAsync" if torch.cuda.get_allocator_backend() == "cudaMallocAsync" else "native"
        return {"name": f"cuda:{dev.index} {torch.cuda.get_device_name(dev)} : {allocator}", "type": "cuda",
                "index": dev.index, "vram_total": total, "vram_free": free + (reserved - active),
                "torch_vram_total": reserved, "torch_vram_free": reserved - active}
    vm = psutil.virtual_memory()
    return {"name": "cpu", "type": "cpu", "index": None, "vram_total": vm.total, "vram_free": vm.available,
            "torch_vram_total": vm.total, "torch_vram_free": vm.available}


@routes.get("/system_stats")
async def system_stats(request: web.Request) -> web.Response:
    vm = psutil.virtual_memory()
    args = request.app[ARGS]
    return web.json_response({
        "system": {"os": sys.platform, "ram_total": vm.total, "ram_free": vm.available,
                   "comfyui_version": COMFYUI_VERSION, "required_frontend_version": REQUIRED_FRONTEND,
                   "installed_templates_version": _version("comfyui-workflow-templates"),
                   "required_templates_version": REQUIRED_TEMPLATES, "python_version": sys.version,
                   "pytorch_version": torch.__version__, "embedded_python": False, "argv": sys.argv},
        "devices": [device_stats(args.cpu)]})


@routes.get("/features")
async def features(request: web.Request) -> web.Response:
    return web.json_response(request.app[HUB].server_features)


@routes.get("/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    return web.json_response([os.path.splitext(n)[0] for n in folders.get_filename_list("embeddings")])


@routes.get("/models")
async def model_kinds(request: web.Request) -> web.Response:
    return web.json_response(folders.model_kinds())


@routes.get("/models/{folder}")
async def model_files(request: web.Request) -> web.Response:
    folder = request.match_info["folder"]
    if folder not in folders.model_kinds():
        return web.Response(status=404)
    return web.json_response(folders.get_filename_list(folder))


@routes.get("/experiment/models")
async def experiment_models(request: web.Request) -> web.Response:
    return web.json_response([{"name": k, "folders": folders.get_folder_paths(k)}
                              for k in folders.model_kinds() if k not in ("configs", "custom_nodes")])


GENERIC_MODEL_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")


@routes.get("/experiment/models/{folder}")
async def experiment_model_files(request: web.Request) -> web.Response:
    folder = request.match_info["folder"]
    if folder not in folders.model_kinds() or folder in ("configs", "custom_nodes"):
        return web.Response(status=404)
    out = []
    for index, root in enumerate(folders.get_folder_paths(folder)):
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for fn in filenames:
                if fn.startswith(".") or not fn.lower().endswith(GENERIC_MODEL_EXTENSIONS):
                    continue
                path = os.path.join(dirpath, fn)
                st = os.stat(path)
                out.append({"name": os.path.relpath(path, root).replace(os.sep, "/"), "pathIndex": index,
                            "modified": st.st_mtime, "created": st.st_ctime, "size": st.st_size})
    return web.json_response(out)


def _safetensors_cover(path: str):
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if size > 100 * 1024 * 1024:
                return None
            meta = json.loads(f.read(size)).get("__metadata__", {})
        covers = json.loads(meta.get("ssmd_cover_images", "[]"))
        return base64.b64decode(covers[0]) if covers else None
    except (OSError, ValueError, IndexError):
        return None


@routes.get("/experiment/models/preview/{folder}/{path_index}/{filename:.*}")
async def model_preview(request: web.Request) -> web.Response:
    folder, filename = request.match_info["folder"], request.match_info["filename"]
    if folder not in folders.model_kinds():
        return web.Response(status=404)
    roots = folders.get_folder_paths(folder)
    try:
        root = roots[int(request.match_info["path_index"])]
    except (ValueError, IndexError):
        return web.Response(status=404)
    model = os.path.abspath(os.path.join(root, filename))
    if not folders.is_inside(model, root):
        return web.Response(status=404)
    stem = os.path.splitext(model)[0]
    data = None
    for candidate in [stem + e for e in IMAGE_EXTENSIONS] + [stem + ".preview" + e for e in IMAGE_EXTENSIONS]:
        if os.path.isfile(candidate):
            with open(candidate, "rb") as f:
                data = f.read()
            break
    if data is None and model.endswith(".safetensors") and os.path.isfile(model):
        data = _safetensors_cover(model)
    if data is None:
        return web.Response(status=404)
    try:
        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).save(buf, format="WEBP")
    except Exception:
        return web.Response(status=404)
    return web.Response(body=buf.getvalue(), content_type="image/webp")
