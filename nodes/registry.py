"""The node registry: class_type -> node class, and the /object_info description of each.

Built-in nodes and custom node packs land in the same dicts. `nodes.NODE_CLASS_MAPPINGS`
(the compatibility name custom packs import) is this module's `NODE_CLASS_MAPPINGS`.
"""
from __future__ import annotations

import logging

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

log = logging.getLogger(__name__)


def register(mapping: dict[str, type], display_names: dict[str, str] | None = None,
             python_module: str | None = None) -> None:
    """Add node classes. `python_module` is what /object_info reports ("nodes" by default,
    "comfy_extras.nodes_x" or "custom_nodes.<pack>" for others)."""
    for name, cls in mapping.items():
        if python_module is not None and getattr(cls, "RELATIVE_PYTHON_MODULE", None) is None:
            try:
                cls.RELATIVE_PYTHON_MODULE = python_module
            except (AttributeError, TypeError):
                pass
        NODE_CLASS_MAPPINGS[name] = cls
    if display_names:
        NODE_DISPLAY_NAME_MAPPINGS.update(display_names)


def get_class(class_type: str) -> type | None:
    return NODE_CLASS_MAPPINGS.get(class_type)


def node_info(class_type: str) -> dict:
    """The V1 /object_info entry of a node class (API.md §4.1), keys in ComfyUI's order."""
    cls = NODE_CLASS_MAPPINGS[class_type]
    if hasattr(cls, "GET_NODE_INFO_V1"):  # V3 schema nodes describe themselves
        return cls.GET_NODE_INFO_V1()
    inputs = cls.INPUT_TYPES()
    info = {
        "input": inputs,
        "input_order": {cat: list(spec.keys()) for cat, spec in inputs.items()},
        "output": cls.RETURN_TYPES,
        "output_is_list": getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES)),
        "output_name": getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES),
        "name": class_type,
        "display_name": NODE_DISPLAY_NAME_MAPPINGS.get(class_type, class_type),
        "description": getattr(cls, "DESCRIPTION", ""),
        "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
        "category": getattr(cls, "CATEGORY", "sd"),
        "output_node": getattr(cls, "OUTPUT_NODE", False) is True,
    }
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        info["output_tooltips"] = cls.OUTPUT_TOOLTIPS
    if getattr(cls, "DEPRECATED", False):
        info["deprecated"] = True
    if getattr(cls, "EXPERIMENTAL", False):
        info["experimental"] = True
    if hasattr(cls, "API_NODE"):
        info["api_node"] = cls.API_NODE
    return info


def all_node_info() -> dict:
    """Every node's entry; a node whose description raises is logged and skipped."""
    out = {}
    for name in list(NODE_CLASS_MAPPINGS):
        try:
            out[name] = node_info(name)
        except Exception:
            log.exception("could not describe node %s", name)
    return out
