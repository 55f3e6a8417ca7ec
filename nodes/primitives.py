"""Value nodes (V3, each reported under its ComfyUI module): the primitives of
comfy_extras.nodes_primitive, the text utilities of nodes_string and the lazy Switch of
nodes_logic."""
from __future__ import annotations

import re
import sys

from nodes import v3 as io

PRIMITIVE = "utils/primitive"
STRING = "utils/string"


def _primitive(node_id, display_name, value_input, output):
    return io.Schema(node_id=node_id, display_name=display_name, category=PRIMITIVE, inputs=[value_input],
                     outputs=[output])


class _Primitive(io.ComfyNode):
    @classmethod
    def execute(cls, value):
        return io.NodeOutput(value)


class PrimitiveString(_Primitive):
    @classmethod
    def define_schema(cls):
        return _primitive("PrimitiveString", "String", io.String.Input("value"), io.String.Output())


class PrimitiveStringMultiline(_Primitive):
    @classmethod
    def define_schema(cls):
        return _primitive("PrimitiveStringMultiline", "String (Multiline)", io.String.Input("value", multiline=True),
                          io.String.Output())


class PrimitiveInt(_Primitive):
    @classmethod
    def define_schema(cls):
        return _primitive("PrimitiveInt", "Int", io.Int.Input("value", min=-sys.maxsize, max=sys.maxsize,
                                                              control_after_generate=True), io.Int.Output())


class PrimitiveFloat(_Primitive):
    @classmethod
    def define_schema(cls):
        return _primitive("PrimitiveFloat", "Float", io.Float.Input("value", min=-sys.maxsize, max=sys.maxsize,
                                                                    step=0.1), io.Float.Output())


class PrimitiveBoolean(_Primitive):
    @classmethod
    def define_schema(cls):
        return _primitive("PrimitiveBoolean", "Boolean", io.Boolean.Input("value"), io.Boolean.Output())


# -- text ------------------------------------------------------------------------------------
def _text(node_id, display_name, inputs, output, description=""):
    return io.Schema(node_id=node_id, display_name=display_name, category=STRING, description=description,
                     inputs=inputs, outputs=[output])


def _multiline(name):
    return io.String.Input(name, multiline=True)


def regex_flags(case_insensitive: bool, multiline: bool, dotall: bool) -> int:
    return ((re.IGNORECASE if case_insensitive else 0) | (re.MULTILINE if multiline else 0)
            | (re.DOTALL if dotall else 0))


class _Text(io.ComfyNode):
    pass


class StringConcatenate(_Text):
    @classmethod
    def define_schema(cls):
        return _text("StringConcatenate", "Concatenate", [
            _multiline("string_a"), _multiline("string_b"),
            io.String.Input("delimiter", multiline=False, default="")], io.String.Output())

    @classmethod
    def execute(cls, string_a, string_b, delimiter):
        return io.NodeOutput(string_a + delimiter + string_b)


class StringSubstring(_Text):
    @classmethod
    def define_schema(cls):
        return _text("StringSubstring", "Substring", [_multiline("string"), io.Int.Input("start"),
                                                      io.Int.Input("end")], io.String.Output())

    @classmethod
    def execute(cls, string, start, end):
        return io.NodeOutput(string[start:end])  # Python slice rules: negatives count from the end


class StringLength(_Text):
    @classmethod
    def define_schema(cls):
        return _text("StringLength", "Length", [_multiline("string")], io.Int.Output(display_name="length"))

    @classmethod
    def execute(cls, string):
        return io.NodeOutput(len(string))


class CaseConverter(_Text):
    MODES = {"UPPERCASE": str.upper, "lowercase": str.lower, "Capitalize": str.capitalize, "Title Case": str.title}

    @classmethod
    def define_schema(cls):
        return _text("CaseConverter", "Case Converter", [
            _multiline("string"), io.Combo.Input("mode", options=list(cls.MODES))], io.String.Output())

    @classmethod
    def execute(cls, string, mode):
        return io.NodeOutput(cls.MODES.get(mode, str)(string))


class StringTrim(_Text):
    MODES = {"Both": str.strip, "Left": str.lstrip, "Right": str.rstrip}

    @classmethod
    def define_schema(cls):
        return _text("StringTrim", "Trim", [_multiline("string"), io.Combo.Input("mode", options=list(cls.MODES))],
                     io.String.Output())

    @classmethod
    def execute(cls, string, mode):
        return io.NodeOutput(cls.MODES.get(mode, str)(string))


class StringReplace(_Text):
    @classmethod
    def define_schema(cls):
        return _text("StringReplace", "Replace", [_multiline("string"), _multiline("find"), _multiline("replace")],
                     io.String.Output())

    @classmethod
    def execute(cls, string, find, replace):
        return io.NodeOutput(string.replace(find, replace))


class StringContains(_Text):
    @classmethod
    def define_schema(cls):
        return _text("StringContains", "Contains", [
            _multiline("string"), _multiline("substring"), io.Boolean.Input("case_sensitive", default=True)],
            io.Boolean.Output(display_name="contains"))

    @classmethod
    def execute(cls, string, substring, case_sensitive):
        if not case_sensitive:
            string, substring = string.lower(), substring.lower()
        return io.NodeOutput(substring in string)


class StringCompare(_Text):
    @classmethod
    def define_schema(cls):
        return _text("StringCompare", "Compare", [
            _multiline("string_a"), _multiline("string_b"),
            io.Combo.Input("mode", options=["Starts With", "Ends With", "Equal"]),
            io.Boolean.Input("case_sensitive", default=True)], io.Boolean.Output())

    @classmethod
    def execute(cls, string_a, string_b, mode, case_sensitive):
        a, b = (string_a, string_b) if case_sensitive else (string_a.lower(), string_b.lower())
        if mode == "Equal":
            return io.NodeOutput(a == b)
        if mode == "Starts With":
            return io.NodeOutput(a.startswith(b))
        if mode == "Ends With":
            return io.NodeOutput(a.endswith(b))
        raise ValueError(f"unknown compare mode {mode!r}")


def _regex_options():
    return [io.Boolean.Input("case_insensitive", default=True), io.Boolean.Input("multiline", default=False),
            io.Boolean.Input("dotall", default=False)]


class RegexMatch(_Text):
    @classmethod
    def define_schema(cls):
        return _text("RegexMatch", "Regex Match", [_multiline("string"), _multiline("regex_pattern"),
                                                   *_regex_options()], io.Boolean.Output(display_name="matches"))

    @classmethod
    def execute(cls, string, regex_pattern, case_insensitive, multiline, dotall):
        try:
            found = re.search(regex_pattern, string, regex_flags(case_insensitive, multiline, dotall)) is not None
        except re.error:
            found = False  # an invalid pattern matches nothing
        return io.NodeOutput(found)


def regex_extract(string, pattern, mode, flags, group_index) -> str:
    """ComfyUI's modes; matches are joined with newlines. 'All Matches' gives each match's text
    (the first group's when the pattern has several groups, as re.findall)."""
    if mode == "First Match":
        m = re.search(pattern, string, flags)
        return m.group(0) if m else ""
    if mode == "All Matches":
        found = re.findall(pattern, string, flags)
        return "\n".join(f[0] if isinstance(f, tuple) else f for f in found)
    if mode == "First Group":
        m = re.search(pattern, string, flags)
        return m.group(group_index) if m and len(m.groups()) >= group_index else ""
    if mode == "All Groups":
        return "\n".join(m.group(group_index) for m in re.finditer(pattern, string, flags)
                         if m.groups() and len(m.groups()) >= group_index)
    return ""


class RegexExtract(_Text):
    @classmethod
    def define_schema(cls):
        return _text("RegexExtract", "Regex Extract", [
            _multiline("string"), _multiline("regex_pattern"),
            io.Combo.Input("mode", options=["First Match", "All Matches", "First Group", "All Groups"]),
            *_regex_options(), io.Int.Input("group_index", default=1, min=0, max=100)], io.String.Output())

    @classmethod
    def execute(cls, string, regex_pattern, mode, case_insensitive, multiline, dotall, group_index):
        try:
            result = regex_extract(string, regex_pattern, mode, regex_flags(case_insensitive, multiline, dotall),
                                   group_index)
        except re.error:
            result = ""
        return io.NodeOutput(result)


class RegexReplace(_Text):
    @classmethod
    def define_schema(cls):
        return _text("RegexReplace", "Regex Replace", [
            _multiline("string"), _multiline("regex_pattern"), _multiline("replace"),
            io.Boolean.Input("case_insensitive", default=True, optional=True),
            io.Boolean.Input("multiline", default=False, optional=True),
            io.Boolean.Input("dotall", default=False, optional=True,
                             tooltip="When enabled, the dot (.) character will match any character including newline "
                                     "characters. When disabled, dots won't match newlines."),
            io.Int.Input("count", default=0, min=0, max=100, optional=True,
                         tooltip="Maximum number of replacements to make. Set to 0 to replace all occurrences "
                                 "(default). Set to 1 to replace only the first match, 2 for the first two "
                                 "matches, etc.")],
            io.String.Output(), description="Find and replace text using regex patterns.")

    @classmethod
    def execute(cls, string, regex_pattern, replace, case_insensitive=True, multiline=False, dotall=False, count=0):
        flags = regex_flags(case_insensitive, multiline, dotall)
        return io.NodeOutput(re.sub(regex_pattern, replace, string, count=count, flags=flags))


# -- logic -----------------------------------------------------------------------------------
class ComfySwitchNode(io.ComfyNode):
    """Passes on_true or on_false on; only the chosen (lazy) input is evaluated."""
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_logic"

    @classmethod
    def define_schema(cls):
        template = io.MatchType.Template("switch")
        return io.Schema(node_id="ComfySwitchNode", display_name="Switch", category="logic", is_experimental=True,
                         inputs=[io.Boolean.Input("switch"),
                                 io.MatchType.Input("on_false", template=template, lazy=True),
                                 io.MatchType.Input("on_true", template=template, lazy=True)],
                         outputs=[io.MatchType.Output(template=template, display_name="output")])

    @classmethod
    def check_lazy_status(cls, switch, on_false=None, on_true=None):
        if switch and on_true is None:
            return ["on_true"]
        if not switch and on_false is None:
            return ["on_false"]
        return []

    @classmethod
    def execute(cls, switch, on_true=None, on_false=None):
        return io.NodeOutput(on_true if switch else on_false)


V3_NODES = [PrimitiveString, PrimitiveStringMultiline, PrimitiveInt, PrimitiveFloat, PrimitiveBoolean,
            StringConcatenate, StringSubstring, StringLength, CaseConverter, StringTrim, StringReplace, StringContains,
            StringCompare, RegexMatch, RegexExtract, RegexReplace, ComfySwitchNode]
# each class names its ComfyUI module itself (registration fills in only a class's own attribute)
for _cls in V3_NODES:
    if "RELATIVE_PYTHON_MODULE" not in _cls.__dict__:
        _cls.RELATIVE_PYTHON_MODULE = ("comfy_extras.nodes_primitive" if issubclass(_cls, _Primitive)
                                       else "comfy_extras.nodes_string")
