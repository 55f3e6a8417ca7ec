"""The aiohttp application factory: `create_app(args) -> web.Application`.

Route modules live in server/routes/; each exports `routes` (a RouteTableDef of core
routes, registered at the plain path and again under /api) and may export
`internal_routes` (mounted under /internal, never duplicated). State lives on the app.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil
import sys

from aiohttp import web

from models import folders
from server import cli
from server.ws import WebSocketHub

log = logging.getLogger(__name__)

# Keys of the app's state.
ARGS = web.AppKey("args", object)
HUB = web.AppKey("hub", WebSocketHub)
QUEUE = web.AppKey("queue", object)
WORKER = web.AppKey("worker", object)


def server_features(args) -> dict:
    return {"supports_preview_metadata": True,
            "max_upload_size": cli.max_upload_bytes(args),
            "extension": {"manager": {"supports_v4": True}}}


def route_modules():
    import server.routes as pkg
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        yield importlib.import_module(f"server.routes.{info.name}")


def _with_api_prefix(table: web.RouteTableDef) -> list[web.RouteDef]:
    out = []
    for r in table:
        if isinstance(r, web.RouteDef):
            out.append(web.RouteDef(r.method, "/api" + r.path, r.handler, r.kwargs))
        else:
            out.append(r)
    return out


def configure_folders(args) -> None:
    folders.configure(base=args.base_directory, input=args.input_directory, output=args.output_directory,
                      temp=args.temp_directory, user=args.user_directory)


def create_app(args=None) -> web.Application:
    if args is None:
        args = cli.parse_args([])
    configure_folders(args)
    from server import middleware  # late: middlewares read folders
    app = web.Application(client_max_size=round(args.max_upload_size * 1024 * 1024),
                          middlewares=middleware.build(args))
    app[ARGS] = args
    hub = WebSocketHub(server_features(args))
    app[HUB] = hub

    core = web.RouteTableDef()
    internal = web.RouteTableDef()
    for mod in route_modules():
        core._items.extend(getattr(mod, "routes", []))
        internal._items.extend(getattr(mod, "internal_routes", []))
    core.get("/ws")(hub.handle)

    app.add_routes(core)
    app.add_routes(_with_api_prefix(core))
    sub = web.Application()
    sub.add_routes(internal)
    app.add_subapp("/internal", sub)

    from server import frontend
    frontend.setup(app, args)

    async def on_startup(app):
        await hub.start()

    async def on_cleanup(app):
        await hub.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
