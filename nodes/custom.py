"""Loading custom node packs: modules or packages in custom_nodes folders exporting
NODE_CLASS_MAPPINGS (+ NODE_DISPLAY_NAME_MAPPINGS, WEB_DIRECTORY) or a V3
`comfy_entrypoint`. A pack that fails to import is logged with its traceback and skipped."""
from __future__ import annotations

import asyncio
import importlib.util
import inspect
import logging
import os
import sys
import time
import traceback

from nodes.registry import NODE_CLASS_MAPPINGS, register

log = logging.getLogger(__name__)


def _module_name(path: str) -> str:
    base = os.path.basename(path)
    return os.path.splitext(base)[0] if os.path.isfile(path) else base


def load_pack(path: str) -> dict | None:
    """Import one pack; returns its record ({"module", "path", "web", "nodes"}) or None."""
    name = _module_name(path)
    if os.path.isfile(path):
        sys_name, init, pack_dir = os.path.splitext(path)[0], path, os.path.dirname(path)
        spec = importlib.util.spec_from_file_location(sys_name, init)
    else:
        sys_name, init, pack_dir = path.replace(".", "_x_"), os.path.join(path, "__init__.py"), path
        spec = importlib.util.spec_from_file_location(sys_name, init, submodule_search_locations=[path])
    module = importlib.util.module_from_spec(spec)
    sys.modules[sys_name] = module
    spec.loader.exec_module(module)
    web = None
    if getattr(module, "WEB_DIRECTORY", None) is not None:
        candidate = os.path.abspath(os.path.join(pack_dir, module.WEB_DIRECTORY))
        web = candidate if os.path.isdir(candidate) else None
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    if mappings is not None:
        register(mappings, getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None), f"custom_nodes.{name}")
        for cls in mappings.values():
            try:
                cls.RELATIVE_PYTHON_MODULE = f"custom_nodes.{name}"
            except (AttributeError, TypeError):
                pass
        nodes = list(mappings)
    elif callable(getattr(module, "comfy_entrypoint", None)):
        nodes = _load_v3_extension(module.comfy_entrypoint, name)
    else:
        log.warning("Skip %s module for custom nodes due to the lack of NODE_CLASS_MAPPINGS.", path)
        return None
    return {"module": f"custom_nodes.{name}", "path": os.path.abspath(pack_dir if os.path.isdir(path) else path),
            "web": web, "nodes": nodes}


def _load_v3_extension(entrypoint, name) -> list[str]:
    async def run():
        ext = await entrypoint() if inspect.iscoroutinefunction(entrypoint) else entrypoint()
        return await ext.get_node_list()
    node_list = _run_coroutine(run())
    from nodes.v3 import register_v3
    for cls in node_list:
        cls.RELATIVE_PYTHON_MODULE = f"custom_nodes.{name}"
    return list(register_v3(node_list, f"custom_nodes.{name}", register))


def _run_coroutine(coro):
    """Run a coroutine to completion even when called from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def pack_paths(folders_list: list[str]) -> list[str]:
    out = []
    for folder in folders_list:
        if not os.path.isdir(folder):
            continue
        for entry in sorted(os.listdir(folder)):
            path = os.path.join(folder, entry)
            if entry.startswith(".") or entry == "__pycache__" or entry.endswith(".disabled"):
                continue
            if os.path.isfile(path) and not entry.endswith(".py"):
                continue
            if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "__init__.py")):
                continue
            out.append(path)
    return out


def load_all(folders_list: list[str], whitelist: set[str] | None = None, disabled: bool = False) -> dict[str, dict]:
    """Load every pack (only whitelisted ones when disabled). {pack name: record}."""
    loaded = {}
    for path in pack_paths(folders_list):
        name = _module_name(path)
        if disabled and name not in (whitelist or set()):
            log.info("Skipping %s: custom nodes are disabled", name)
            continue
        started = time.perf_counter()
        try:
            record = load_pack(path)
        except Exception:
            log.warning("Cannot import %s module for custom nodes:\n%s", path, traceback.format_exc())
            continue
        if record is not None:
            loaded[name] = record
            log.info("%6.1f seconds: %s", time.perf_counter() - started, path)
    return loaded
