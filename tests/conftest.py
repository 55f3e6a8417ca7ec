"""Shared fixtures: a fresh comfyd app per test, with its folders in a temp dir."""
from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# compat/: the modules custom node packs import (folder_paths, comfy.*, ...), as at start-up
for _p in (ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "compat")):
    if _p not in sys.path:
        sys.path.insert(0, _p)


@pytest.fixture
def base_dir(tmp_path):
    for d in ("input", "output", "temp", "user", "models"):
        (tmp_path / d).mkdir()
    return tmp_path


@pytest.fixture
def make_args(base_dir):
    """Build parsed CLI args rooted at the test's base dir; extra flags may be given."""
    from server import cli

    def make(*extra: str):
        return cli.parse_args(["--base-directory", str(base_dir), "--cpu", *extra])
    return make


@pytest.fixture
async def client(aiohttp_client, make_args):
    """An HTTP client for a default comfyd app (use make_args + aiohttp_client for flags)."""
    from server.app import create_app
    return await aiohttp_client(create_app(make_args()))


@pytest.fixture
def test_nodes():
    """Registers tests/executor_nodes.py classes (T_<Name>) for one test."""
    from nodes import registry
    import executor_nodes
    registry.register(executor_nodes.MAPPINGS, python_module="custom_nodes.test")
    executor_nodes.CALLS.clear()
    yield executor_nodes
    for name in executor_nodes.MAPPINGS:
        registry.NODE_CLASS_MAPPINGS.pop(name, None)
