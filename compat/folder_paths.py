"""ComfyUI's `folder_paths` module for custom node packs, over models/folders.py."""
from __future__ import annotations

import mimetypes
import os
import time

from models import folders as _f
from models.folders import (MODEL_EXTENSIONS as supported_pt_extensions, add_model_folder_path,  # noqa: F401
                            annotated_filepath, exists_annotated_filepath, get_annotated_filepath,
                            get_directory_by_type, get_filename_list, get_folder_paths, get_full_path,
                            get_full_path_or_raise, map_legacy)
from nodes.image_save import get_save_image_path  # noqa: F401

SYSTEM_USER_PREFIX = "__"


def __getattr__(name):
    s = _f.state()
    dynamic = {"folder_names_and_paths": lambda: s.models, "base_path": lambda: s.base,
               "models_dir": lambda: os.path.join(s.base, "models"), "output_directory": lambda: s.output,
               "input_directory": lambda: s.input, "temp_directory": lambda: s.temp,
               "user_directory": lambda: s.user}
    dynamic["filename_list_cache"] = lambda: _f._list_cache  # packs clear it to force a re-scan
    if name in dynamic:
        return dynamic[name]()
    raise AttributeError(name)


def get_output_directory() -> str:
    return _f.state().output


def get_input_directory() -> str:
    return _f.state().input


def get_temp_directory() -> str:
    return _f.state().temp


def get_user_directory() -> str:
    return _f.state().user


def set_output_directory(path: str) -> None:
    _f.state().output = os.path.abspath(path)


def set_input_directory(path: str) -> None:
    _f.state().input = os.path.abspath(path)


def set_temp_directory(path: str) -> None:
    _f.state().temp = os.path.abspath(path)


def set_user_directory(path: str) -> None:
    _f.state().user = os.path.abspath(path)


def get_public_user_directory(user: str) -> str | None:
    if not user or user.startswith(SYSTEM_USER_PREFIX):
        return None
    return os.path.join(get_user_directory(), user)


def get_system_user_directory(name: str = "system") -> str:
    """<user>/__<name>: internal data no HTTP route serves."""
    if not name or not isinstance(name, str):
        raise ValueError("System user name cannot be empty")
    if not name.replace("_", "").isalnum():
        raise ValueError(f"Invalid system user name: '{name}'")
    if name.startswith("_"):
        raise ValueError("System user name should not start with underscore")
    return os.path.join(get_user_directory(), SYSTEM_USER_PREFIX + name)


def get_input_subfolders() -> list[str]:
    """Every folder under the input directory, relative, with forward slashes, sorted."""
    root = get_input_directory()
    out = []
    for dirpath, _dirs, _files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel != ".":
            out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def get_filename_list_(folder_name: str):
    """(files, {scanned folder: mtime}, time of the scan), as ComfyUI's uncached listing."""
    dirs = {}
    for root in get_folder_paths(folder_name):
        if os.path.isdir(root):
            dirs.update(recursive_search(root, [".git"])[1])
    return get_filename_list(folder_name), dirs, time.perf_counter()


def filter_files_extensions(files, extensions):
    exts = {e.lower() for e in extensions}
    return sorted(f for f in files if not exts or os.path.splitext(f)[1].lower() in exts)


# extension -> content type; seeded with the ones mimetypes does not know everywhere
extension_mimetypes_cache = {"webp": "image", "fbx": "model"}


def filter_files_content_types(files, content_types):
    """Files whose type ("image", "video", "audio", "model" = 3D) is one of content_types."""
    out = []
    for f in files:
        ext = f.split(".")[-1]
        kind = extension_mimetypes_cache.get(ext)
        if kind is None:
            mime = mimetypes.guess_type(f, strict=False)[0]
            if not mime:
                continue
            kind = extension_mimetypes_cache[ext] = mime.split("/")[0]
        if kind in content_types:
            out.append(f)
    return out


def recursive_search(directory, excluded_dir_names=None):
    if not os.path.isdir(directory):
        return [], {}
    excluded = set(excluded_dir_names or [])
    result, dirs = [], {}
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = [d for d in dirnames if d not in excluded]
        dirs[dirpath] = os.path.getmtime(dirpath)
        result += [os.path.relpath(os.path.join(dirpath, f), directory) for f in filenames]
    return result, dirs


class _CacheHelper:
    """ComfyUI batches file-list scans per request with this; comfyd caches per second."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def clear(self):
        pass


cache_helper = _CacheHelper()
