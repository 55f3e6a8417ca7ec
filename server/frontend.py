"""Serving the official web frontend (comfyui-frontend-package) at / and the templates at /templates/."""
from __future__ import annotations

import os

from aiohttp import web


def web_root(args) -> str | None:
    if getattr(args, "front_end_root", None):
        return os.path.abspath(args.front_end_root)
    try:
        import comfyui_frontend_package
    except ImportError:
        return None
    return os.path.join(os.path.dirname(comfyui_frontend_package.__file__), "static")


def setup(app: web.Application, args) -> None:
    root = web_root(args)
    if root is None or not os.path.isdir(root):
        return

    async def index(request):
        return web.FileResponse(os.path.join(root, "index.html"), headers={
            "Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"})

    app.router.add_get("/", index)
    app.router.add_get("/api/", index)
    app.router.add_static("/", root, follow_symlinks=False)
