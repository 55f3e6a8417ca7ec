"""`comfy_extras.nodes_<x>` for packs that import core node classes from there
(`from comfy_extras.nodes_clip_sdxl import CLIPTextEncodeSDXL`). Each such module is made on
import from the registry: the node classes /object_info reports under that python_module,
by node id and by class name, plus its NODE_CLASS_MAPPINGS. A module no registered node
claims does not exist."""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types


def _classes_of(module_name: str) -> dict[str, type]:
    from nodes.registry import NODE_CLASS_MAPPINGS
    return {k: v for k, v in NODE_CLASS_MAPPINGS.items()
            if getattr(v, "RELATIVE_PYTHON_MODULE", None) == module_name}


class _NodeModule(types.ModuleType):
    def __getattr__(self, name):
        mapping = _classes_of(self.__name__)
        if name == "NODE_CLASS_MAPPINGS":
            return mapping
        if name in mapping:
            return mapping[name]
        for cls in mapping.values():
            if cls.__name__ == name:
                return cls
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(__name__ + ".") and fullname.count(".") == 1 and _classes_of(fullname):
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        return _NodeModule(spec.name)

    def exec_module(self, module):
        pass


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.append(_Finder())
