"""Reading model files: key names and shapes first, tensors on demand.

`.safetensors` / `.sft` files are opened memory-mapped (safetensors' safe_open) and each
tensor is read when asked for, straight to the requested dtype and device, so a checkpoint
is never copied whole into RAM and the parts not needed (a text encoder the node does not
output, EMA weights) are never read. Pickled files (`.ckpt`, `.pt`, `.pth`, `.bin`, ...)
are read only with `torch.load(weights_only=True)` (memory-mapped when the file is in the
zip format), never by plain unpickling.

Problems come out as ModelFileError with a message a user can act on.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator, Mapping

import torch

SAFETENSORS_EXTENSIONS = (".safetensors", ".sft")
PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".pth", ".bin", ".pkl")


# --disable-mmap: copy tensors out of the file mapping instead of using it in place.
_options = {"mmap": True}


def set_mmap(enabled: bool) -> None:
    _options["mmap"] = bool(enabled)


class ModelFileError(ValueError):
    """A model file is missing, unreadable, corrupt, or not the kind of file expected."""


class TensorSource:
    """Read-only view of a state dict: keys, shapes, and tensors on demand."""

    metadata: dict | None = None

    def keys(self) -> list[str]:
        raise NotImplementedError

    def shape(self, key: str) -> tuple:
        raise NotImplementedError

    def get(self, key: str, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
        raise NotImplementedError

    def __contains__(self, key) -> bool:
        return key in self._key_set()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def _key_set(self):
        if getattr(self, "_keys_cache", None) is None:
            self._keys_cache = set(self.keys())
        return self._keys_cache

    def with_prefix(self, prefix: str) -> list[str]:
        return [k for k in self.keys() if k.startswith(prefix)]

    def read(self, keys: Iterable[str], strip: str = "", dtype=None, device=None,
             rename=None) -> dict[str, torch.Tensor]:
        """{key without `strip` (then renamed): tensor} for the given keys."""
        out = {}
        for k in keys:
            name = k[len(strip):] if strip and k.startswith(strip) else k
            if rename is not None:
                name = rename(name)
            out[name] = self.get(k, dtype, device)
        return out

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _convert(t: torch.Tensor, dtype, device) -> torch.Tensor:
    if dtype is not None and t.is_floating_point() and t.dtype != dtype:
        t = t.to(dtype)
    if device is not None and t.device != torch.device(device):
        t = t.to(device)
    return t


class DictSource(TensorSource):
    """A state dict already in memory (tests, tensors built by code, unpickled files)."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], metadata: dict | None = None):
        self.sd = state_dict
        self.metadata = metadata

    def keys(self):
        return list(self.sd.keys())

    def shape(self, key):
        return tuple(self.sd[key].shape)

    def get(self, key, dtype=None, device=None):
        return _convert(self.sd[key], dtype, device)


class SafetensorsSource(TensorSource):
    def __init__(self, path: str):
        from safetensors import safe_open
        self.path = path
        try:
            self._f = safe_open(path, framework="pt", device="cpu")
            self._keys = list(self._f.keys())
            self.metadata = self._f.metadata()
        except Exception as e:  # safetensors raises its own error type for bad headers
            raise ModelFileError(f"{os.path.basename(path)} is not a valid safetensors file "
                                 f"(corrupt or truncated?): {e}") from e
        self._check_size()

    def _check_size(self):
        # A truncated download has a valid header but data ending early; catch it before
        # reading tensors fails halfway through a load.
        import json
        import struct
        with open(self.path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end > os.path.getsize(self.path):
            raise ModelFileError(f"{os.path.basename(self.path)} is truncated: its header describes "
                                 f"{8 + n + end} bytes, the file has {os.path.getsize(self.path)}")

    def keys(self):
        return self._keys

    def shape(self, key):
        return tuple(self._f.get_slice(key).get_shape())

    def get(self, key, dtype=None, device=None):
        try:
            t = self._f.get_tensor(key)
        except Exception as e:
            raise ModelFileError(f"cannot read tensor {key!r} from {os.path.basename(self.path)}: {e}") from e
        out = _convert(t, dtype, device)
        return out if _options["mmap"] or out is not t else t.clone()

    def close(self):
        self._f = None


def _unwrap(obj, path):
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and len(obj) == 1:
        only = next(iter(obj.values()))
        if isinstance(only, dict):
            obj = only
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(f"{os.path.basename(path)} does not hold a state dict of tensors")
    return obj


def _load_pickle(path: str) -> dict:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=_options["mmap"])
        except RuntimeError as e:
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except ModelFileError:
        raise
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            msg = "it contains Python objects other than tensors, which are not loaded for safety"
        raise ModelFileError(f"cannot load {os.path.basename(path)}: {msg}") from e
    return _unwrap(obj, path)


def open_state_dict(path: str) -> TensorSource:
    """Open a model file for reading keys, shapes and tensors."""
    if not os.path.exists(path):
        raise ModelFileError(f"model file not found: {path}")
    if not os.path.isfile(path):
        raise ModelFileError(f"not a file: {path}")
    if os.path.getsize(path) < 8:
        raise ModelFileError(f"{os.path.basename(path)} is empty or truncated")
    lower = path.lower()
    if lower.endswith(SAFETENSORS_EXTENSIONS):
        return SafetensorsSource(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if not lower.endswith(PICKLE_EXTENSIONS) and head[8:9] == b"{":
        return SafetensorsSource(path)  # a safetensors file with another extension
    return DictSource(_load_pickle(path))


def load_state_dict(path: str, dtype: torch.dtype | None = None, device=None) -> dict[str, torch.Tensor]:
    """The whole state dict of a file (floating tensors converted to `dtype` if given)."""
    with open_state_dict(path) as src:
        return src.read(src.keys(), dtype=dtype, device=device)


def as_source(obj) -> TensorSource:
    if isinstance(obj, TensorSource):
        return obj
    if isinstance(obj, Mapping):
        return DictSource(obj)
    if isinstance(obj, (str, os.PathLike)):
        return open_state_dict(os.fspath(obj))
    raise TypeError(f"expected a path, a state dict or a TensorSource, got {type(obj).__name__}")
