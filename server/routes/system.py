"""System and model listings: /system_stats, /features, /embeddings, /models, /experiment/models
(API.md §6)."""
from __future__ import annotations

import base64
import io
import json
import os
import sys
import warnings
from importlib import metadata

import psutil
import torch
from aiohttp import web
from PIL import Image

from models import devices, folders
from server.app_keys import ARGS, HUB

routes = web.RouteTableDef()

COMFYUI_VERSION = "0.8.0"
FRONTEND_PACKAGE = "comfyui-frontend-package"
TEMPLATES_PACKAGE = "comfyui-workflow-templates"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")  # model previews
PREVIEW_HEADER_LIMIT = 8 * 1024 * 1024
HIDDEN_MODEL_FOLDERS = ("configs", "custom_nodes")  # not model libraries: left out of /experiment/models


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def device_stats(use_cpu: bool) -> dict:
    """The torch device entry of /system_stats (API.md §6) for the device models run on
    (models/devices.py): CUDA figures from the driver and the caching allocator, else system
    RAM for the CPU. Driver queries only: no synchronisation with a running prompt."""
    compute = devices.compute_device()
    if not use_cpu and compute.kind == "cuda" and torch.cuda.is_available():
        dev = compute.torch_device
        free, total = torch.cuda.mem_get_info(dev)
        stats = torch.cuda.memory_stats(dev)
        reserved = stats.get("reserved_bytes.all.current", 0)
        active = stats.get("active_bytes.all.current", 0)
        try:
            allocator = torch.cuda.get_allocator_backend()
        except RuntimeError:
            allocator = ""
        return {"name": f"{dev} {torch.cuda.get_device_name(dev)} : {allocator}", "type": "cuda",
                "index": dev.index, "vram_total": total, "vram_free": free + (reserved - active),
                "torch_vram_total": reserved, "torch_vram_free": reserved - active}
    vm = psutil.virtual_memory()
    return {"name": "cpu", "type": "cpu", "index": None, "vram_total": vm.total, "vram_free": vm.available,
            "torch_vram_total": vm.total, "torch_vram_free": vm.available}


def system_info() -> dict:
    vm = psutil.virtual_memory()
    # comfyd's "required" versions are the packages it is installed with: the frontend it
    # serves is the one it requires, so the UI shows no outdated-frontend warning.
    frontend = installed_version(FRONTEND_PACKAGE)
    templates = installed_version(TEMPLATES_PACKAGE)
    return {"os": sys.platform, "ram_total": vm.total, "ram_free": vm.available,
            "comfyui_version": COMFYUI_VERSION, "required_frontend_version": frontend,
            "installed_templates_version": templates, "required_templates_version": templates,
            "python_version": sys.version, "pytorch_version": torch.version.__version__,
            "embedded_python": os.path.basename(os.path.dirname(sys.executable)) == "python_embeded",
            "argv": sys.argv}


@routes.get("/system_stats")
async def system_stats(request: web.Request) -> web.Response:
    return web.json_response({"system": system_info(), "devices": [device_stats(request.app[ARGS].cpu)]})


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
                              for k in folders.model_kinds() if k not in HIDDEN_MODEL_FOLDERS])


def model_file_entries(root: str, index: int) -> list[dict]:
    """Weight files under one folder of a kind, recursively (hidden files and folders and
    .git skipped; symlinked folders followed, as model libraries often are)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if fn.startswith(".") or os.path.splitext(fn)[1].lower() not in folders.MODEL_EXTENSIONS:
                continue
            path = os.path.join(dirpath, fn)
            try:
                st = os.stat(path)
            except OSError:
                continue  # a dangling link: skipped, as ComfyUI does
            out.append({"name": os.path.relpath(path, root), "pathIndex": index,
                        "modified": st.st_mtime, "created": st.st_ctime, "size": st.st_size})
    return out


@routes.get("/experiment/models/{folder}")
async def experiment_model_files(request: web.Request) -> web.Response:
    folder = request.match_info["folder"]
    if folder not in folders.model_kinds():
        return web.Response(status=404)
    out = []
    for index, root in enumerate(folders.get_folder_paths(folder)):
        if os.path.isdir(root):
            out.extend(model_file_entries(root, index))
    return web.json_response(out)


def _safetensors_cover(path: str) -> bytes | None:
    """The first ssmd_cover_images entry (base64) of a safetensors header, if any."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if size > PREVIEW_HEADER_LIMIT:
                return None
            header = json.loads(f.read(size))
        meta = header.get("__metadata__", {}) if isinstance(header, dict) else {}
        covers = json.loads(meta.get("ssmd_cover_images") or "[]") if isinstance(meta, dict) else []
        return base64.b64decode(covers[0]) if covers else None
    except (OSError, ValueError, IndexError, TypeError, AttributeError):
        return None


def _preview_bytes(model: str) -> bytes | None:
    """A model's preview: '<stem>.<image ext>', '<stem>.preview.<image ext>', or the cover
    image stored in '<stem>.safetensors'."""
    stem = os.path.splitext(model)[0]
    for candidate in [stem + e for e in IMAGE_EXTENSIONS] + [stem + ".preview" + e for e in IMAGE_EXTENSIONS]:
        if os.path.isfile(candidate):
            with open(candidate, "rb") as f:
                return f.read()
    if os.path.isfile(stem + ".safetensors"):
        return _safetensors_cover(stem + ".safetensors")
    return None


@routes.get("/experiment/models/preview/{folder}/{path_index}/{filename:.*}")
async def model_preview(request: web.Request) -> web.Response:
    folder, filename = request.match_info["folder"], request.match_info["filename"]
    if folder not in folders.model_kinds() or "\x00" in filename:
        return web.Response(status=404)
    roots = folders.get_folder_paths(folder)
    index = request.match_info["path_index"]
    if not index.isdigit() or int(index) >= len(roots):
        return web.Response(status=404)
    root = roots[int(index)]
    model = os.path.abspath(os.path.join(root, filename))
    if not folders.is_inside(model, root):
        return web.Response(status=404)
    data = _preview_bytes(model)
    if data is None:
        return web.Response(status=404)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.save(buf, format="WEBP")
    except Exception:  # undecodable, or too large to decode: no preview
        return web.Response(status=404)
    return web.Response(body=buf.getvalue(), content_type="image/webp")
