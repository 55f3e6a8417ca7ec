"""Serving the official web frontend (comfyui-frontend-package) at /, the core workflow
templates (comfyui-workflow-templates) at /templates/ and the embedded node docs
(comfyui-embedded-docs, if installed) at /docs/ (API.md §1.2, §8).

Files go out with content types from our own table rather than the platform's mime
database, so a module script is `application/javascript` on every machine (a Docker
image without /etc/mime.types included). The web root is registered last, as a GET
catch-all: it never shadows a route registered before it, and a GET to any unknown
path ends in 404.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.resources
import logging
import mimetypes
import os

from aiohttp import web

log = logging.getLogger(__name__)

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "application/javascript; charset=utf-8",
    ".mjs": "application/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".eot": "application/vnd.ms-fontobject",
    ".wasm": "application/wasm",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mp3": "audio/mpeg",
    ".flac": "audio/flac",
    ".wav": "audio/wav",
    ".glb": "model/gltf-binary",
}
NO_CACHE = {"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"}
# ComfyUI serves the manifest-based templates packages (>= 0.3.0) by asset name only.
TEMPLATES_ASSET_MAP_SINCE = (0, 3, 0)


def content_type(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return CONTENT_TYPES.get(ext) or mimetypes.guess_type(path)[0] or "application/octet-stream"


def file_response(path: str, headers: dict | None = None) -> web.FileResponse:
    return web.FileResponse(path, headers={"Content-Type": content_type(path), **(headers or {})})


def resolve_inside(root: str, rel: str) -> str | None:
    """The regular file `rel` names under `root`, or None when it is missing, a folder,
    or resolves (through '..' or a symlink) outside `root`."""
    if "\0" in rel:
        return None
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(real_root, rel.lstrip("/")))
    if os.path.commonpath([real_root, target]) != real_root or not os.path.isfile(target):
        return None
    return target


def static_dir_handler(root: str):
    async def serve(request: web.Request) -> web.StreamResponse:
        target = resolve_inside(root, request.match_info["path"])
        if target is None:
            raise web.HTTPNotFound()
        return file_response(target)
    return serve


def add_static_dir(app: web.Application, prefix: str, root: str) -> None:
    """GET/HEAD `prefix/<path>` -> the file under `root` (404 if absent); prefix '' = catch-all."""
    app.router.add_get(prefix + "/{path:.*}", static_dir_handler(root))


def web_root(args) -> str | None:
    if getattr(args, "front_end_root", None):
        return os.path.abspath(args.front_end_root)
    try:
        import comfyui_frontend_package
    except ImportError:
        return None
    return os.path.join(os.path.dirname(comfyui_frontend_package.__file__), "static")


def _package_version(dist: str) -> tuple[int, ...] | None:
    try:
        raw = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    parts = []
    for piece in raw.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


@functools.cache
def template_assets() -> dict[str, str]:
    """Asset file name (e.g. 'index.json', 'default-1.webp') -> its template id, from the
    templates manifest. Paths are resolved per request: the map itself is a cheap read."""
    try:
        from comfyui_workflow_templates import iter_templates
        return {asset.filename: entry.template_id for entry in iter_templates() for asset in entry.assets}
    except Exception as e:  # a broken install must not stop the server
        log.error("workflow templates unavailable: %s", e)
        return {}


async def serve_template(request: web.Request) -> web.StreamResponse:
    name = request.match_info["path"]
    template_id = template_assets().get(name)
    if template_id is None:
        raise web.HTTPNotFound()
    from comfyui_workflow_templates import get_asset_path
    try:
        path = get_asset_path(template_id, name)
    except (FileNotFoundError, KeyError):  # listed in the manifest, its media bundle not installed
        raise web.HTTPNotFound()
    return file_response(path)


def setup_templates(app: web.Application) -> None:
    version = _package_version("comfyui-workflow-templates")
    if version is None:
        log.info("comfyui-workflow-templates is not installed: /templates/ is empty")
        return
    if version >= TEMPLATES_ASSET_MAP_SINCE:
        app.router.add_get("/templates/{path:.*}", serve_template)
        return
    import comfyui_workflow_templates  # older releases ship one templates/ folder
    add_static_dir(app, "/templates", str(importlib.resources.files(comfyui_workflow_templates) / "templates"))


def docs_root() -> str | None:
    try:
        import comfyui_embedded_docs
    except ImportError:
        return None
    root = str(importlib.resources.files(comfyui_embedded_docs) / "docs")
    return root if os.path.isdir(root) else None


def setup(app: web.Application, args) -> None:
    """Register /templates, /docs and the web root; call after every other route."""
    setup_templates(app)
    docs = docs_root()
    if docs:
        add_static_dir(app, "/docs", docs)
    root = web_root(args)
    if root is None or not os.path.isfile(os.path.join(root, "index.html")):
        log.warning("no frontend found (install comfyui-frontend-package or pass --front-end-root): "
                    "only the API is served")
        return

    async def index(request: web.Request) -> web.FileResponse:
        return file_response(os.path.join(root, "index.html"), NO_CACHE)

    app.router.add_get("/", index)
    app.router.add_get("/api/", index)
    add_static_dir(app, "", root)
