"""The V3 node schema (`comfy_api.latest.io`): a node declares a Schema and a classmethod
`execute`; this module gives such classes the V1 attributes (INPUT_TYPES, RETURN_TYPES,
FUNCTION, ...) the executor speaks, and the V3 /object_info shape."""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from nodes.protocol import ExecutionBlocker
from nodes.v3_types import *  # noqa: F401,F403  (the socket types are part of `io`)
from nodes.v3_types import Input, MatchType, Output


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"
    auth_token_comfy_org = "AUTH_TOKEN_COMFY_ORG"
    api_key_comfy_org = "API_KEY_COMFY_ORG"


class HiddenHolder:
    """`cls.hidden` inside execute: the hidden values the schema asked for (None otherwise)."""

    def __init__(self, **values):
        self.__dict__.update(values)

    def __getattr__(self, key):
        return None


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    hidden: list = field(default_factory=list)
    description: str = ""
    search_aliases: list = field(default_factory=list)
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def finalize(self):
        self.inputs, self.outputs, self.hidden = self.inputs or [], self.outputs or [], list(self.hidden or [])
        if self.is_api_node:
            for h in (Hidden.auth_token_comfy_org, Hidden.api_key_comfy_org):
                if h not in self.hidden:
                    self.hidden.append(h)
        if self.is_output_node:
            for h in (Hidden.prompt, Hidden.extra_pnginfo):
                if h not in self.hidden:
                    self.hidden.append(h)
        for i, out in enumerate(self.outputs):
            if out.id is None:
                out.id = f"_{i}_{out.io_type}_"
        ids = [i.id for i in self.inputs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"Input ids must be unique in {self.node_id}")
        return self

    def v1_inputs(self) -> dict:
        inputs: dict = {"required": {}}
        for i in self.inputs:
            options = i.as_dict()
            options.pop("optional", None)
            inputs.setdefault("optional" if i.optional else "required", {})[i.id] = (i.get_io_type(), options)
        for h in self.hidden:
            inputs.setdefault("hidden", {})[h.name] = (h.value,)
        return inputs

    def v1_info(self, cls) -> dict:
        inputs = self.v1_inputs()
        outs = self.outputs
        matchtypes = [o.template.template_id if isinstance(o, MatchType.Output) else None for o in outs]
        return {
            "input": inputs,
            "input_order": {k: list(v) for k, v in inputs.items()},
            "output": [o.io_type for o in outs],
            "output_is_list": [o.is_output_list for o in outs],
            "output_name": [o.display_name or o.io_type for o in outs],
            "output_tooltips": [o.tooltip or None for o in outs],
            "output_matchtypes": matchtypes if any(m is not None for m in matchtypes) else None,
            "name": self.node_id,
            "display_name": self.display_name,
            "description": self.description,
            "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
            "category": self.category,
            "output_node": self.is_output_node,
            "deprecated": self.is_deprecated,
            "experimental": self.is_experimental,
            "api_node": self.is_api_node,
        }


class classproperty:
    def __init__(self, fget):
        self.fget = fget

    def __get__(self, obj, owner):
        return self.fget(owner)


def _schema_attr(getter):
    return classproperty(lambda cls: getter(cls._schema()))


class NodeOutput:
    def __init__(self, *args, ui=None, expand: dict = None, block_execution: str = None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args if self.args else None

    @classmethod
    def from_dict(cls, data: dict) -> "NodeOutput":
        result = data.get("result", ())
        if isinstance(result, ExecutionBlocker):
            return cls(block_execution=result.message)
        return cls(*result, ui=data.get("ui"), expand=data.get("expand"))

    def __getitem__(self, index):
        return self.args[index]


def _normalize(cls, value) -> NodeOutput:
    if value is None:
        value = NodeOutput()
    elif isinstance(value, tuple):
        value = NodeOutput(*value)
    elif isinstance(value, dict):
        value = NodeOutput.from_dict(value)
    elif isinstance(value, ExecutionBlocker):
        value = NodeOutput(block_execution=value.message)
    elif not isinstance(value, NodeOutput):
        raise Exception(f"Invalid return type from node: {type(value)}")
    if value.expand is not None and not cls._schema().enable_expand:
        raise Exception(f"Node {cls.__name__} is not expandable, but expand included in NodeOutput; "
                        "set enable_expand=True on the node's Schema to allow this.")
    return value


class ComfyNode(ABC):
    """Base class of V3 nodes. Subclasses implement define_schema() and execute(); they may
    implement validate_inputs, fingerprint_inputs and check_lazy_status (all classmethods)."""

    RELATIVE_PYTHON_MODULE = None
    hidden: HiddenHolder = HiddenHolder()

    @classmethod
    @abstractmethod
    def define_schema(cls) -> Schema:
        ...

    @classmethod
    @abstractmethod
    def execute(cls, **kwargs):
        ...

    @classmethod
    def _schema(cls) -> Schema:
        return cls.define_schema().finalize()

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        return cls._schema()

    # -- the V1 face the executor and /object_info use ------------------------------
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return cls._schema().v1_inputs()

    @classmethod
    def GET_NODE_INFO_V1(cls) -> dict:
        return cls._schema().v1_info(cls)

    RETURN_TYPES = _schema_attr(lambda s: tuple(o.io_type for o in s.outputs))
    RETURN_NAMES = _schema_attr(lambda s: tuple(o.display_name or o.io_type for o in s.outputs))
    OUTPUT_IS_LIST = _schema_attr(lambda s: tuple(o.is_output_list for o in s.outputs))
    OUTPUT_TOOLTIPS = _schema_attr(lambda s: tuple(o.tooltip or None for o in s.outputs))
    INPUT_IS_LIST = _schema_attr(lambda s: s.is_input_list)
    OUTPUT_NODE = _schema_attr(lambda s: s.is_output_node)
    CATEGORY = _schema_attr(lambda s: s.category)
    DESCRIPTION = _schema_attr(lambda s: s.description)
    DEPRECATED = _schema_attr(lambda s: s.is_deprecated)
    EXPERIMENTAL = _schema_attr(lambda s: s.is_experimental)
    API_NODE = _schema_attr(lambda s: s.is_api_node)
    NOT_IDEMPOTENT = _schema_attr(lambda s: s.not_idempotent)
    FUNCTION = classproperty(lambda cls: "EXECUTE_NORMALIZED_ASYNC" if inspect.iscoroutinefunction(cls.execute)
                             else "EXECUTE_NORMALIZED")

    @classmethod
    def _with_hidden(cls, kwargs: dict):
        """Split hidden values off the call and bind them to a per-call class clone."""
        hidden_names = {h.name for h in cls._schema().hidden}
        hidden = {k: kwargs.pop(k) for k in list(kwargs) if k in hidden_names}
        clone = type(cls.__name__, (cls,), {"hidden": HiddenHolder(**hidden), "__module__": cls.__module__})
        return clone, kwargs

    @classmethod
    def EXECUTE_NORMALIZED(cls, **kwargs):
        clone, kwargs = cls._with_hidden(kwargs)
        return _normalize(cls, clone.execute(**kwargs))

    @classmethod
    async def EXECUTE_NORMALIZED_ASYNC(cls, **kwargs):
        clone, kwargs = cls._with_hidden(kwargs)
        return _normalize(cls, await clone.execute(**kwargs))

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Only hooks a node class (or a parent below ComfyNode) overrides become V1 hooks, as
        # ComfyUI checks for a real override; they are bound to each subclass anew.
        def own(name):
            """The classmethod descriptor of `name` defined below ComfyNode, or None."""
            for klass in cls.__mro__:
                if klass is ComfyNode:
                    return None
                if name in klass.__dict__:
                    attr = klass.__dict__[name]
                    return getattr(getattr(attr, "__func__", None), "_v3_raw", attr)  # unwrap a parent's wrapper
            return None
        if (validate := own("validate_inputs")) is not None:
            cls.VALIDATE_INPUTS = validate.__get__(None, cls)
        if (fingerprint := own("fingerprint_inputs")) is not None:
            cls.IS_CHANGED = fingerprint.__get__(None, cls)
        if (raw := own("check_lazy_status")) is not None:
            def check_lazy_status(*args, _original=raw.__get__(None, cls), _cls=cls, **kw):
                hidden_names = {h.name for h in _cls._schema().hidden}
                return _original(**{k: v for k, v in kw.items() if k not in hidden_names})
            check_lazy_status._v3_raw = raw
            cls.check_lazy_status = staticmethod(check_lazy_status)


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        pass

    @abstractmethod
    async def get_node_list(self) -> list:
        ...


def register_v3(nodes_list: list, python_module: str, registry_register) -> dict:
    """Register V3 classes under their schema node_id (display name from the schema)."""
    mapping, names = {}, {}
    for cls in nodes_list:
        schema = cls._schema()
        mapping[schema.node_id] = cls
        if schema.display_name:
            names[schema.node_id] = schema.display_name
        if "RELATIVE_PYTHON_MODULE" not in cls.__dict__ or cls.__dict__["RELATIVE_PYTHON_MODULE"] is None:
            cls.RELATIVE_PYTHON_MODULE = python_module
    registry_register(mapping, names, python_module)
    return mapping
