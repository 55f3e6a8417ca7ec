"""/internal/* (frontend-only, not duplicated under /api; API.md §9)."""
from __future__ import annotations

import os

from aiohttp import web

from models import folders
from server import logs
from server.app_keys import HUB
from server.routes._common import bad_request, read_json

internal_routes = web.RouteTableDef()


@internal_routes.get("/logs")
async def get_logs(request):
    return web.json_response("".join(f"{e['t']} - {e['m']}" for e in logs.entries()))


@internal_routes.get("/logs/raw")
async def get_raw_logs(request):
    return web.json_response({"entries": logs.entries(), "size": logs.terminal_size()})


@internal_routes.patch("/logs/subscribe")
async def subscribe_logs(request):
    body = await read_json(request)
    client_id, enabled = body.get("clientId"), body.get("enabled")
    if not isinstance(client_id, str) or enabled is None:
        return bad_request('expected {"clientId": "<ws sid>", "enabled": true|false}')
    logs.subscribe(request.config_dict[HUB], client_id, bool(enabled))
    return web.Response(status=200)


@internal_routes.get("/folder_paths")
async def folder_paths(request):
    return web.json_response({k: folders.get_folder_paths(k) for k in folders.model_kinds()})


@internal_routes.get("/files/{directory_type}")
async def list_files(request):
    directory_type = request.match_info["directory_type"]
    root = folders.get_directory_by_type(directory_type) if directory_type in ("output", "input", "temp") else None
    if root is None:
        return web.json_response({"error": "Invalid directory type"}, status=400)
    if not os.path.isdir(root):
        return web.json_response([])
    visible = []
    with os.scandir(root) as it:
        for e in it:
            if e.name.startswith(".") or not e.is_file():
                continue
            try:
                visible.append((e.stat().st_mtime, e.name))
            except OSError:
                continue  # vanished or a dangling link
    visible.sort(key=lambda t: -t[0])  # newest first; stable for equal times
    return web.json_response([name for _, name in visible])
