"""Node classes users wire together, grouped by subject, and the registry.

This package is also what custom node packs reach as `import nodes`:
`nodes.NODE_CLASS_MAPPINGS`, `nodes.NODE_DISPLAY_NAME_MAPPINGS`, `nodes.MAX_RESOLUTION`.
"""
from nodes.registry import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, register  # noqa: F401
from nodes.constants import MAX_RESOLUTION  # noqa: F401
from nodes import builtin as _builtin

_builtin.register_all()


def __getattr__(name):
    """`from nodes import SaveImage` (custom packs subclass core nodes): any registered node
    class by its class_type; the registry is read at lookup time, so late packs count too."""
    if name == "common_ksampler":  # packs call ComfyUI's nodes.common_ksampler directly
        from nodes.sampling import common_ksampler
        return common_ksampler
    cls = NODE_CLASS_MAPPINGS.get(name)
    if cls is None:
        raise AttributeError(f"module 'nodes' has no attribute {name!r}")
    return cls
