"""/extensions (JS files the frontend imports), /i18n, /workflow_templates and
/global_subgraphs (API.md §6, §8), from the frontend's own extensions folder and the web
directories, locales, example workflows and subgraphs of custom node packs."""
from __future__ import annotations

import glob
import hashlib
import json
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


def _merge(dst: dict, src: dict):
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v


@routes.get("/i18n")
async def i18n(request: web.Request) -> web.Response:
    out: dict = {}
    for pack in LOADED_PACKS.values():
        locales = os.path.join(pack["path"], "locales")
        if not os.path.isdir(locales):
            continue
        for lang in sorted(os.listdir(locales)):
            entry: dict = {}
            for part in ("main", "nodeDefs", "commands", "settings"):
                f = os.path.join(locales, lang, f"{part}.json")
                if os.path.isfile(f):
                    try:
                        with open(f, encoding="utf-8") as fh:
                            data = json.load(fh)
                    except ValueError:
                        continue
                    if part == "main":
                        _merge(entry, data)
                    else:
                        _merge(entry, {part: data})
            _merge(out.setdefault(lang, {}), entry)
    return web.json_response(out)


TEMPLATE_DIRS = ("example_workflows", "example", "examples", "workflow", "workflows")


@routes.get("/workflow_templates")
async def workflow_templates(request: web.Request) -> web.Response:
    out = {}
    for name, pack in LOADED_PACKS.items():
        for d in TEMPLATE_DIRS:
            files = sorted(glob.glob(os.path.join(pack["path"], d, "*.json")))
            if files:
                out[name] = [os.path.splitext(os.path.basename(f))[0] for f in files]
                break
    return web.json_response(out)


def _subgraphs() -> dict:
    out = {}
    for name, pack in LOADED_PACKS.items():
        for f in sorted(glob.glob(os.path.join(pack["path"], "subgraphs", "*.json"))):
            sid = hashlib.sha256(f"{name}/{os.path.basename(f)}".encode()).hexdigest()
            out[sid] = {"source": "custom_node", "name": os.path.splitext(os.path.basename(f))[0],
                        "info": {"node_pack": pack["module"]}, "_file": f}
    return out


@routes.get("/global_subgraphs")
async def global_subgraphs(request: web.Request) -> web.Response:
    return web.json_response({k: {kk: vv for kk, vv in v.items() if kk != "_file"} for k, v in _subgraphs().items()})


@routes.get("/global_subgraphs/{id}")
async def global_subgraph(request: web.Request) -> web.Response:
    entry = _subgraphs().get(request.match_info["id"])
    if entry is None:
        return web.json_response(None)
    with open(entry["_file"], encoding="utf-8") as f:
        data = f.read()
    return web.json_response({**{k: v for k, v in entry.items() if k != "_file"}, "data": data})
