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
import tomllib
import traceback

from nodes.registry import NODE_CLASS_MAPPINGS, register

log = logging.getLogger(__name__)


def _module_name(path: str) -> str:
    base = os.path.basename(path)
    return os.path.splitext(base)[0] if os.path.isfile(path) else base


def _pyproject_web_dir(pack_dir: str) -> tuple[str, str] | None:
    """[tool.comfy] web = "<dir>" in the pack's pyproject.toml registers that folder under the
    [project] name, as ComfyUI does (before WEB_DIRECTORY, which may reuse the name)."""
    path = os.path.join(pack_dir, "pyproject.toml")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            config = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        log.warning("Unable to parse %s: %s", path, e)
        return None
    web = config.get("tool", {}).get("comfy", {}).get("web")
    name = config.get("project", {}).get("name")
    if not web or not name:
        return None
    web_dir = os.path.join(pack_dir, web)
    return (name, web_dir) if os.path.isdir(web_dir) else None


def load_pack(path: str, ignore: frozenset[str] = frozenset()) -> dict | None:
    """Import one pack; returns its record ({"module", "path", "web_dirs", "nodes"}) or None.
    Node ids in `ignore` (the built-in nodes) are not replaced."""
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
    web_dirs = {}
    from_pyproject = _pyproject_web_dir(path) if os.path.isdir(path) else None
    if from_pyproject:
        web_dirs[from_pyproject[0]] = os.path.abspath(from_pyproject[1])
    if getattr(module, "WEB_DIRECTORY", None) is not None:
        candidate = os.path.abspath(os.path.join(pack_dir, module.WEB_DIRECTORY))
        if os.path.isdir(candidate):
            web_dirs[name] = candidate
    python_module = f"custom_nodes.{name}"
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    if mappings is not None:
        kept = {k: v for k, v in mappings.items() if k not in ignore}
        register(kept, getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None), python_module)
        for cls in kept.values():
            try:
                cls.RELATIVE_PYTHON_MODULE = python_module
            except (AttributeError, TypeError):
                pass
        nodes = list(kept)
    elif callable(getattr(module, "comfy_entrypoint", None)):
        nodes = _load_v3_extension(module.comfy_entrypoint, python_module, ignore)
    else:
        log.warning("Skip %s module for custom nodes due to the lack of NODE_CLASS_MAPPINGS.", path)
        return None
    return {"module": python_module, "path": os.path.abspath(pack_dir if os.path.isdir(path) else path),
            "web_dirs": web_dirs, "nodes": nodes}


def _load_v3_extension(entrypoint, python_module: str, ignore: frozenset[str]) -> list[str]:
    async def run():
        ext = await entrypoint() if inspect.iscoroutinefunction(entrypoint) else entrypoint()
        from nodes.v3 import ComfyExtension
        if not isinstance(ext, ComfyExtension):
            raise TypeError("comfy_entrypoint did not return a ComfyExtension")
        node_list = await ext.get_node_list()
        if not isinstance(node_list, list):
            raise TypeError("the extension's get_node_list did not return a list of nodes")
        return node_list
    node_list = _run_coroutine(run())
    from nodes.v3 import register_v3
    kept = [cls for cls in node_list if cls._schema().node_id not in ignore]
    for cls in kept:
        cls.RELATIVE_PYTHON_MODULE = python_module
    return list(register_v3(kept, python_module, register))


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
    # Packs may not replace built-in nodes, except comfyd's stand-ins for third-party packs'
    # nodes (reported as custom_nodes.<pack>): the real pack, when installed, wins for those.
    builtin = frozenset(name for name, cls in NODE_CLASS_MAPPINGS.items()
                        if not str(getattr(cls, "RELATIVE_PYTHON_MODULE", None) or "").startswith("custom_nodes."))
    for path in pack_paths(folders_list):
        name = _module_name(path)
        if disabled and name not in (whitelist or set()):
            log.info("Skipping %s: custom nodes are disabled", name)
            continue
        started = time.perf_counter()
        try:
            record = load_pack(path, builtin)
        except Exception:
            log.warning("Cannot import %s module for custom nodes:\n%s", path, traceback.format_exc())
            continue
        if record is not None:
            loaded[name] = record
            log.info("%6.1f seconds: %s", time.perf_counter() - started, path)
    return loaded
