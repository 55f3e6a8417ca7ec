"""/internal/* (frontend-only, not duplicated under /api; API.md §9)."""
from __future__ import annotations

import os

from aiohttp import web

from models import folders
from server import logs
from server.app_keys import HUB
from server.routes._common import BadRequest, bad_request, read_json

internal_routes = web.RouteTableDef()


@internal_routes.get("/logs")
async def get_logs(request):
    return web.json_response("".join(f"{e['t']} - {e['m']}" for e in logs.entries()))


@internal_routes.get("/logs/raw")
async def get_raw_logs(request):
    return web.json_response({"entries": logs.entries(), "size": logs.terminal_size()})


@internal_routes.patch("/logs/subscribe")
async def subscribe_logs(request):
    try:
        body = await read_json(request)
        client_id, enabled = body["clientId"], body["enabled"]
    except (BadRequest, KeyError) as e:
        return bad_request(f"expected {{clientId, enabled}}: {e}")
    logs.subscribe(request.config_dict[HUB], client_id, bool(enabled))
    return web.Response(status=200)


@internal_routes.get("/folder_paths")
async def folder_paths(request):
    return web.json_response({k: folders.get_folder_paths(k) for k in folders.model_kinds()})


@internal_routes.get("/files/{directory_type}")
async def list_files(request):
    root = folders.get_directory_by_type(request.match_info["directory_type"])
    if root is None:
        return web.json_response({"error": "Invalid directory type"}, status=400)
    if not os.path.isdir(root):
        return web.json_response([])
    entries = [e for e in os.scandir(root) if e.is_file() and not e.name.startswith(".")]
    entries.sort(key=lambda e: e.stat().st_mtime, reverse=True)
    return web.json_response([e.name for e in entries])
