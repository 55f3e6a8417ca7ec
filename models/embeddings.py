"""Textual-inversion embeddings for `embedding:name` in prompts (COVERAGE.md §3.9, §4.4).

`EmbeddingLibrary(directories)` is the lookup the tokenizers call: name, vector width and
encoder key ("clip_l", "clip_g", "clip_h") -> a [n, width] float tensor, or None. Names are
resolved as ComfyUI does: relative to each embeddings folder and to every sub-folder of it,
the exact file first, then with `.safetensors`, `.pt`, `.bin` appended; a name that leads
out of the folder is refused. Files are read once and cached by path and modification time.

Accepted contents: A1111 `.pt` (`string_to_param`), one-tensor safetensors (`emb_params`),
SDXL pairs (`clip_l` [n,768] + `clip_g` [n,1280], each encoder its own key), lists of dicts
(tensors of the encoder's width concatenated), "bundled" embeddings inside a LoRA file
(`bundle_emb.<name>.string_to_param.*` / `bundle_emb.<name>.<key>`), and legacy pickles read
as raw float arrays. Pickles are only ever loaded with weights_only=True.
"""
from __future__ import annotations

import logging
import os
import zipfile

import torch

log = logging.getLogger(__name__)

EXTENSIONS = (".safetensors", ".pt", ".bin")


def _search_dirs(directories) -> list[str]:
    if isinstance(directories, (str, os.PathLike)):
        directories = [directories]
    out = []
    for top in directories:
        top = os.fspath(top)
        for root, _dirs, _files in sorted(os.walk(top, followlinks=True)):
            if root not in out:
                out.append(root)
    return out


def find_embedding(name: str, directories) -> str | None:
    for folder in _search_dirs(directories):
        folder = os.path.abspath(folder)
        path = os.path.abspath(os.path.join(folder, name))
        try:
            if os.path.commonpath((folder, path)) != folder:
                continue  # "../x" or an absolute path: not inside this folder
        except ValueError:
            continue
        if os.path.isfile(path):
            return path
        for ext in EXTENSIONS:
            if os.path.isfile(path + ext):
                return path + ext
    return None


def _raw_floats_from_zip(path: str) -> torch.Tensor | None:
    """Old pickles that weights_only cannot read: take the tensor storage bytes directly."""
    with zipfile.ZipFile(path) as zf:
        for member in reversed([n for n in zf.namelist() if "data/" in n]):
            data = zf.read(member)
            count = len(data) // 4
            if count < 768:
                continue
            width = 768 if count % 768 == 0 else 1024
            return torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(count // width, width).clone()
    return None


def read_embedding_file(path: str):
    """The raw contents: a dict of tensors, a list of dicts, or a tensor (legacy pickles)."""
    if path.lower().endswith(".safetensors"):
        import safetensors.torch
        return safetensors.torch.load_file(path, device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raw = _raw_floats_from_zip(path) if zipfile.is_zipfile(path) else None
        if raw is None:
            raise
        return raw


def _bundled(contents: dict, suffix: str) -> torch.Tensor | None:
    parts = [v for k, v in contents.items() if k.startswith("bundle_emb.") and k.endswith(suffix)]
    return torch.cat(parts, dim=0) if parts else None


def select_vectors(contents, width: int, key: str) -> torch.Tensor | None:
    """The vectors of an embedding file meant for an encoder of this width and key."""
    if torch.is_tensor(contents):
        return contents
    if isinstance(contents, list):
        parts = [t.reshape(-1, t.shape[-1]) for d in contents for t in d.values()
                 if torch.is_tensor(t) and t.shape[-1] == width]
        return torch.cat(parts, dim=0) if parts else None
    if not isinstance(contents, dict) or not contents:
        return None
    if "string_to_param" in contents:
        return next(iter(contents["string_to_param"].values()))
    if key in contents:
        return contents[key]
    found = _bundled(contents, ".string_to_param.*")
    if found is None:
        found = _bundled(contents, f".{key}")
    if found is None:
        found = next(iter(contents.values()))
    return found if torch.is_tensor(found) else None


class EmbeddingLibrary:
    """Callable lookup over one or more embeddings folders."""

    def __init__(self, directories):
        self.directories = directories
        self._cache: dict[str, tuple[float, object]] = {}

    def _contents(self, path: str):
        mtime = os.path.getmtime(path)
        hit = self._cache.get(path)
        if hit is None or hit[0] != mtime:
            hit = (mtime, read_embedding_file(path))
            self._cache[path] = hit
        return hit[1]

    def __call__(self, name: str, width: int, key: str) -> torch.Tensor | None:
        path = find_embedding(name, self.directories)
        if path is None:
            return None
        try:
            vectors = select_vectors(self._contents(path), width, key)
        except Exception as e:  # a broken file is skipped with a warning, as ComfyUI does
            log.warning("error loading embedding %s, skipping it: %s", name, e)
            return None
        if vectors is None:
            log.warning("embedding %s holds no vectors for %s", name, key)
            return None
        return vectors.detach().float()
