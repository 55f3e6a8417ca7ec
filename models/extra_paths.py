"""extra_model_paths.yaml (ComfyUI's format): extra folders per model kind, optionally under
a base_path, several per kind as a multi-line string; `custom_nodes` adds pack folders."""
from __future__ import annotations

import logging
import os

import yaml

from models import folders

log = logging.getLogger(__name__)


def load(yaml_path: str) -> None:
    with open(yaml_path, encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    yaml_dir = os.path.dirname(os.path.abspath(yaml_path))
    for section in config.values():
        if not section:
            continue
        section = dict(section)
        base = section.pop("base_path", None)
        if base:
            base = os.path.expandvars(os.path.expanduser(base))
            if not os.path.isabs(base):
                base = os.path.abspath(os.path.join(yaml_dir, base))
        is_default = bool(section.pop("is_default", False))
        for kind, value in section.items():
            for line in str(value).split("\n"):
                if not line:
                    continue
                path = os.path.join(base, line) if base else (
                    line if os.path.isabs(line) else os.path.abspath(os.path.join(yaml_dir, line)))
                log.info("Adding extra search path %s %s", kind, os.path.normpath(path))
                folders.add_model_folder_path(kind, os.path.normpath(path), is_default)
