"""/extensions (API.md §6): the JS files the frontend imports, from its own extensions folder
and the web directories of loaded custom node packs, which are served statically under
/extensions/<name>/. The other pack-derived routes are in frontend_support.py."""
from __future__ import annotations

import glob
import os
import urllib.parse

from aiohttp import web

from server import frontend
from server.app_keys import ARGS

routes = web.RouteTableDef()

# pack name -> {"module": dotted name, "path": pack folder, "web_dirs": {served name: folder},
# "nodes": node ids}; filled by the custom node loader at start-up.
LOADED_PACKS: dict[str, dict] = {}


def web_directories() -> dict[str, str]:
    """Served name -> folder, over every loaded pack (a later pack may reuse a name)."""
    out: dict[str, str] = {}
    for pack in LOADED_PACKS.values():
        out.update(pack.get("web_dirs", {}))
    return out


@routes.get("/extensions")
async def list_extensions(request: web.Request) -> web.Response:
    out = []
    root = frontend.web_root(request.app[ARGS])
    if root:
        ext_dir = os.path.join(root, "extensions")
        for path in sorted(glob.glob(os.path.join(ext_dir, "**", "*.js"), recursive=True)):
            out.append("/extensions/" + os.path.relpath(path, ext_dir).replace(os.sep, "/"))
    for name, web_dir in web_directories().items():
        for path in sorted(glob.glob(os.path.join(glob.escape(web_dir), "**", "*.js"), recursive=True)):
            rel = os.path.relpath(path, web_dir).replace(os.sep, "/")
            out.append(f"/extensions/{urllib.parse.quote(name)}/{rel}")
    return web.json_response(out)


def add_static_routes(app: web.Application) -> None:
    """/extensions/<name>/... for every loaded pack's web directory (no /api twin, as ComfyUI)."""
    for name, web_dir in web_directories().items():
        app.router.add_static(f"/extensions/{urllib.parse.quote(name)}", web_dir)
