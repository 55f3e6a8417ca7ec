"""The aiohttp application factory: `create_app(args) -> web.Application`.

Route modules live in server/routes/; each exports `routes` (a RouteTableDef of core
routes, registered at the plain path and again under /api) and may export
`internal_routes` (mounted under /internal, never duplicated) and `init_app(app)` (sets up
the module's state on the app before start-up). State lives on the app.
"""
from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import sys

from aiohttp import web

from models import folders
from server import cli
from server.ws import WebSocketHub

# The modules custom node packs import (folder_paths, comfy.*, comfy_execution.*, comfy_api.*).
COMPAT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "compat")
if COMPAT_DIR not in sys.path:
    sys.path.insert(0, COMPAT_DIR)

log = logging.getLogger(__name__)

from server.app_keys import ARGS, EXECUTOR, HUB, QUEUE, WORKER  # noqa: F401  (re-exported)


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
    from models import extra_paths
    configs = cli.extra_model_paths_files(args)
    default = os.path.join(folders.state().base, "extra_model_paths.yaml")
    if os.path.isfile(default):
        configs.insert(0, default)
    for config in configs:
        try:
            extra_paths.load(config)
        except (OSError, ValueError) as e:
            log.error("could not read %s: %s", config, e)


def load_custom_nodes(app: web.Application, args) -> web.RouteTableDef:
    """Import the packs; returns the routes they added through PromptServer.instance.routes."""
    from nodes import custom
    from server.routes import extensions
    from nodes import registry
    from server.routes import prompt
    if extensions.LOADED_PACKS:  # an earlier app in this process (tests)
        for pack in extensions.LOADED_PACKS.values():
            for name in pack["nodes"]:
                registry.NODE_CLASS_MAPPINGS.pop(name, None)
        from nodes.builtin import register_all
        register_all()  # built-in stand-ins a pack had replaced come back
    extensions.LOADED_PACKS.clear()
    prompt.on_prompt_handlers.clear()
    packs = custom.load_all(folders.get_folder_paths("custom_nodes"), set(args.whitelist_custom_nodes),
                            disabled=args.disable_all_custom_nodes)
    extensions.LOADED_PACKS.update(packs)
    extensions.add_static_routes(app)
    from server.routes import frontend_support
    frontend_support.add_static_routes(app, packs)


def cache_mode(args) -> tuple[str, int]:
    """ComfyUI's precedence: --cache-lru N (N > 0), then --cache-ram, then --cache-none."""
    if args.cache_lru and args.cache_lru > 0:
        return "lru", args.cache_lru
    if args.cache_ram and args.cache_ram > 0:
        return "ram", 0
    if args.cache_none:
        return "none", 0
    return "classic", 0


def _setup_execution(app: web.Application, args, hub: WebSocketHub) -> None:
    """The queue, the executor and the worker thread, reporting through the hub."""
    from executor.queue import PromptQueue
    from executor.runner import PromptExecutor
    from executor.worker import Worker
    from models.sampling import preview

    preview.configure(args.preview_method, args.preview_size)
    from nodes import settings as node_settings
    node_settings.configure(args.disable_metadata, args.default_hashing_function)
    from models.state_dict import set_mmap
    set_mmap(not args.disable_mmap)  # --disable-mmap: tensors copied out of the file mapping
    from models import devices, memory
    devices.configure(args)  # compute device, vram state and dtype flags (models/devices.py)
    memory.reset()  # a new app (tests build several per process) starts with no models placed

    def broadcast_status():
        hub.send("status", {"status": {"exec_info": {"queue_remaining": queue.get_tasks_remaining()}}})

    from executor.store import open_store
    # "__" folders are system users that no HTTP request can read (the file holds the sensitive slot)
    store = open_store(os.path.join(folders.state().user, "__comfyd"), args.port)
    queue = PromptQueue(on_change=broadcast_status, max_history=args.max_history, store=store)
    mode, lru = cache_mode(args)
    executor = PromptExecutor(hub, cache_mode=mode, lru_size=lru, ram_headroom=args.cache_ram or 0.0)
    worker = Worker(queue, executor, hub, free_models=memory.release_all,  # POST /free unloads models
                    batch_prompts=getattr(args, "batch_prompts", False))
    app[QUEUE], app[EXECUTOR], app[WORKER] = queue, executor, worker
    hub.queue_remaining = queue.get_tasks_remaining
    hub.current_executing = worker.current_node_for


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
    _setup_execution(app, args, hub)

    core = web.RouteTableDef()
    internal = web.RouteTableDef()
    for mod in route_modules():
        core._items.extend(getattr(mod, "routes", []))
        internal._items.extend(getattr(mod, "internal_routes", []))
        if hasattr(mod, "init_app"):  # per-app state a route module needs (set before start-up)
            mod.init_app(app)
    core.get("/ws")(hub.handle)

    from server.prompt_server import PromptServer
    server = PromptServer(app, hub, app[QUEUE], app[WORKER])
    from nodes import settings as node_settings
    node_settings.set_progress_text_sender(server.send_progress_text)  # GetImageSize's text on the node
    load_custom_nodes(app, args)
    core._items.extend(server.routes)

    app.add_routes(core)
    app.add_routes(_with_api_prefix(core))
    sub = web.Application()
    sub.add_routes(internal)
    app.add_subapp("/internal", sub)

    from server import frontend
    frontend.setup(app, args)

    async def on_startup(app):
        await hub.start()
        app[WORKER].start()

    async def on_cleanup(app):
        app[WORKER].stop()
        app[QUEUE].store.close()
        await hub.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
