"""Routes the frontend reads from custom node pack folders (API.md §8): /i18n (locales),
/workflow_templates (example workflows, files served under /api/workflow_templates/<pack>/)
and /global_subgraphs. As in ComfyUI these scan every pack folder under the custom_nodes
paths, loaded or not; only the static workflow files are limited to loaded packs."""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os

from aiohttp import web

from models import folders

routes = web.RouteTableDef()
log = logging.getLogger(__name__)

LOCALE_EXTRA_FILES = ("nodeDefs", "commands", "settings")  # keys beside main.json's own
TEMPLATE_DIRS = ("example_workflows", "example", "examples", "workflow", "workflows")


def _pack_dirs() -> list[str]:
    out = []
    for root in folders.get_folder_paths("custom_nodes"):
        out += sorted(glob.glob(os.path.join(glob.escape(root), "*", "")))
    return [d.rstrip(os.sep) for d in out]


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        log.error("Error loading %s", path)
        return {}


def merge_json(base, update):
    """Dicts merge recursively, lists concatenate, anything else is replaced."""
    if isinstance(base, dict) and isinstance(update, dict):
        merged = dict(base)
        for k, v in update.items():
            merged[k] = merge_json(merged[k], v) if k in merged else v
        return merged
    if isinstance(base, list) and isinstance(update, list):
        return base + update
    return update


def translations() -> dict:
    out: dict = {}
    for pack in _pack_dirs():
        for lang_dir in sorted(glob.glob(os.path.join(glob.escape(pack), "locales", "*", ""))):
            lang = os.path.basename(lang_dir.rstrip(os.sep))
            entry = _read_json(os.path.join(lang_dir, "main.json"))
            for key in LOCALE_EXTRA_FILES:
                data = _read_json(os.path.join(lang_dir, f"{key}.json"))
                if data:
                    entry[key] = data
            out.setdefault(lang, {})
            if entry:
                out[lang] = merge_json(out[lang], entry)
    return out


@routes.get("/i18n")
async def i18n(request: web.Request) -> web.Response:
    return web.json_response(translations())


@routes.get("/workflow_templates")
async def workflow_templates(request: web.Request) -> web.Response:
    out: dict[str, list[str]] = {}
    for pack in _pack_dirs():
        for d in TEMPLATE_DIRS:
            for f in sorted(glob.glob(os.path.join(glob.escape(pack), d, "*.json"))):
                out.setdefault(os.path.basename(pack), []).append(os.path.splitext(os.path.basename(f))[0])
    return web.json_response(out)


def add_static_routes(app: web.Application, loaded_packs: dict[str, dict]) -> None:
    """/api/workflow_templates/<pack>/<file>.json for loaded folder packs (first template
    folder that exists wins)."""
    for name, pack in loaded_packs.items():
        if not os.path.isdir(pack["path"]):
            continue
        for d in TEMPLATE_DIRS:
            folder = os.path.join(pack["path"], d)
            if os.path.isdir(folder):
                app.router.add_static(f"/api/workflow_templates/{name}", folder)
                break


def _subgraphs() -> dict:
    out = {}
    for pack in _pack_dirs():
        for f in sorted(glob.glob(os.path.join(glob.escape(pack), "subgraphs", "*.json"))):
            path = f.replace("\\", "/")
            # ComfyUI's id: reproducible for the same install path across restarts
            sid = hashlib.sha256(f"custom_node{path}".encode()).hexdigest()
            out[sid] = {"source": "custom_node", "name": os.path.splitext(os.path.basename(f))[0],
                        "info": {"node_pack": "custom_nodes." + path.split("/")[-3]}, "_file": f}
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
