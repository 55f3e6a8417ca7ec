"""The full-size random checkpoints of ../shared/oracle/, made on demand and cached.

`oracle_model_path("oracle_sd15_s1.safetensors")` returns the file, generating it with the
oracle's own make_ckpt.py (deterministic, bit-identical on any x86-64 CPU) into the cache
directory the first time: $COMFYD_ORACLE_CACHE, else <tmp>/oracle_models, laid out like
ComfyUI's models folder (checkpoints/, loras/, controlnet/, clip_vision/). Tests call
`require_oracle_model`, which skips (not fails) only when the disk cannot hold the file.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.tiny_checkpoints import ORACLE_DIR

CACHE_DIR = os.environ.get("COMFYD_ORACLE_CACHE", os.path.join(tempfile.gettempdir(), "oracle_models"))
COMPONENTS_DIR = os.path.join(ORACLE_DIR, "components")


def manifest() -> dict:
    with open(os.path.join(ORACLE_DIR, "models.json")) as f:
        return json.load(f)


def oracle_model_path(name: str) -> str:
    entry = manifest()[name]
    path = os.path.join(CACHE_DIR, entry["folder"], name)
    if os.path.exists(path) and os.path.getsize(path) == entry["size"]:
        return path
    os.makedirs(CACHE_DIR, exist_ok=True)
    free = shutil.disk_usage(CACHE_DIR).free
    if free < entry["size"] + (1 << 30):
        raise OSError(f"not enough disk for {name}: {entry['size'] >> 20} MiB needed, {free >> 20} MiB free")
    subprocess.run([sys.executable, os.path.join(ORACLE_DIR, "make_ckpt.py"), "--from-manifest",
                    os.path.join(ORACLE_DIR, "models.json"), "--models-dir", CACHE_DIR, "--only", name],
                   check=True)
    return path


def require_oracle_model(name: str) -> str:
    if not os.path.isdir(ORACLE_DIR):
        pytest.skip("oracle directory not available")
    try:
        return oracle_model_path(name)
    except OSError as e:
        pytest.skip(str(e))
