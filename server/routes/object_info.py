"""GET /object_info and /object_info/{node_class}: node definitions for clients (API.md §4.1)."""
from __future__ import annotations

from aiohttp import web

import nodes  # noqa: F401  (registers the built-in nodes)
from nodes import registry

routes = web.RouteTableDef()


@routes.get("/object_info")
async def object_info(request: web.Request) -> web.Response:
    # Recomputed per request so new model/input files show up without a restart.
    return web.json_response(registry.all_node_info())


@routes.get("/object_info/{node_class}")
async def object_info_one(request: web.Request) -> web.Response:
    name = request.match_info["node_class"]
    if name not in registry.NODE_CLASS_MAPPINGS:
        return web.json_response({})
    try:
        return web.json_response({name: registry.node_info(name)})
    except Exception as e:  # a broken custom node must not take the route down
        return web.json_response({"error": f"could not describe node {name}: {e}"}, status=500)
