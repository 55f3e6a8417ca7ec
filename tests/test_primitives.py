"""Primitive, string and switch nodes over HTTP (values shown by a small output node), their
edge cases against Python's own string/regex semantics, and /object_info shapes."""
import re
import sys

import pytest

from nodes import primitives as P
from nodes import registry
from wsclient import run_prompt


class Show:
    """Test output node: shows whatever it is given."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*",)}}
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, value):
        return {"ui": {"value": [value]}}


@pytest.fixture
def show(test_nodes):
    registry.register({"H15_Show": Show}, python_module="custom_nodes.test")
    yield
    registry.NODE_CLASS_MAPPINGS.pop("H15_Show", None)


async def shown(client, prompt, *out_ids):
    resp, events, history = await run_prompt(client, prompt)
    assert "prompt_id" in resp, resp
    assert history["status"]["status_str"] == "success", [e for e in events if e[0] == "execution_error"]
    return [history["outputs"][i]["ui"]["value"][0] if "ui" in history["outputs"][i]
            else history["outputs"][i]["value"][0] for i in out_ids]


def node(cls, **inputs):
    return {"class_type": cls, "inputs": inputs}


async def test_string_pipeline_over_http(client, show):
    prompt = {
        "a": node("PrimitiveString", value="  Hello"),
        "b": node("PrimitiveStringMultiline", value="World\nline two  "),
        "cat": node("StringConcatenate", string_a=["a", 0], string_b=["b", 0], delimiter=", "),
        "trim": node("StringTrim", string=["cat", 0], mode="Both"),
        "up": node("CaseConverter", string=["trim", 0], mode="UPPERCASE"),
        "len": node("StringLength", string=["trim", 0]),
        "sub": node("StringSubstring", string=["trim", 0], start=-8, end=-4),
        "rep": node("StringReplace", string=["trim", 0], find="o", replace="0"),
        "has": node("StringContains", string=["up", 0], substring="hello", case_sensitive=False),
        "cmp": node("StringCompare", string_a=["trim", 0], string_b="hello", mode="Starts With", case_sensitive=True),
        "s1": node("H15_Show", value=["trim", 0]), "s2": node("H15_Show", value=["up", 0]),
        "s3": node("H15_Show", value=["len", 0]), "s4": node("H15_Show", value=["sub", 0]),
        "s5": node("H15_Show", value=["rep", 0]), "s6": node("H15_Show", value=["has", 0]),
        "s7": node("H15_Show", value=["cmp", 0]),
    }
    joined = ("  Hello" + ", " + "World\nline two  ").strip()
    got = await shown(client, prompt, "s1", "s2", "s3", "s4", "s5", "s6", "s7")
    assert got == [joined, joined.upper(), len(joined), joined[-8:-4], joined.replace("o", "0"), True, False]


async def test_regex_nodes_over_http(client, show):
    text = "id=12 name=ab\nid=7 name=cd"
    prompt = {
        "t": node("PrimitiveStringMultiline", value=text),
        "m": node("RegexMatch", string=["t", 0], regex_pattern="^ID=7", case_insensitive=True, multiline=True,
                  dotall=False),
        "m2": node("RegexMatch", string=["t", 0], regex_pattern="^ID=7", case_insensitive=True, multiline=False,
                   dotall=False),
        "bad": node("RegexMatch", string=["t", 0], regex_pattern="(", case_insensitive=True, multiline=False,
                    dotall=False),
        "all": node("RegexExtract", string=["t", 0], regex_pattern=r"id=(\d+) name=(\w+)", mode="All Matches",
                    case_insensitive=True, multiline=False, dotall=False, group_index=1),
        "grp": node("RegexExtract", string=["t", 0], regex_pattern=r"id=(\d+) name=(\w+)", mode="All Groups",
                    case_insensitive=True, multiline=False, dotall=False, group_index=2),
        "first": node("RegexExtract", string=["t", 0], regex_pattern=r"name=\w+", mode="First Match",
                      case_insensitive=True, multiline=False, dotall=False, group_index=1),
        "rep": node("RegexReplace", string=["t", 0], regex_pattern=r"\d+", replace="#", count=1),
    }
    for i, k in enumerate(["m", "m2", "bad", "all", "grp", "first", "rep"]):
        prompt[f"s{i}"] = node("H15_Show", value=[k, 0])
    got = await shown(client, prompt, *[f"s{i}" for i in range(7)])
    pattern = re.compile(r"id=(\d+) name=(\w+)", re.IGNORECASE)
    assert got[0] is True and got[1] is False and got[2] is False  # an invalid pattern matches nothing
    assert got[3] == "\n".join(m[0] for m in pattern.findall(text))  # several groups: the first one
    assert got[4] == "\n".join(m.group(2) for m in pattern.finditer(text))
    assert got[5] == "name=ab"
    assert got[6] == re.sub(r"\d+", "#", text, count=1, flags=re.IGNORECASE)


async def test_primitives_and_lazy_switch(client, show):
    prompt = {
        "i": node("PrimitiveInt", value=-(2 ** 40)), "f": node("PrimitiveFloat", value=2.5),
        "b": node("PrimitiveBoolean", value=True),
        "good": node("T_IntConst", value=5), "boom": node("T_Fail", value=["good", 0]),
        "sw": node("ComfySwitchNode", switch=["b", 0], on_true=["i", 0], on_false=["boom", 0]),
        "s0": node("H15_Show", value=["sw", 0]), "s1": node("H15_Show", value=["f", 0]),
    }
    # the failing on_false branch is never run: only the chosen input is evaluated
    assert await shown(client, prompt, "s0", "s1") == [-(2 ** 40), 2.5]
    prompt["b"]["inputs"]["value"] = False
    resp, events, history = await run_prompt(client, prompt)
    errors = [d for t, d in events if t == "execution_error"]
    assert errors and errors[0]["node_type"] == "T_Fail"


def test_regex_extract_group_rules():
    flags = re.IGNORECASE
    assert P.regex_extract("a1 b2", r"([a-z])(\d)", "First Group", flags, 0) == "a1"  # group 0: the whole match
    assert P.regex_extract("a1 b2", r"([a-z])(\d)", "First Group", flags, 3) == ""  # no such group
    assert P.regex_extract("a1 b2", r"[a-z]\d", "All Groups", flags, 1) == ""  # no groups at all
    assert P.regex_extract("a1 b2", r"([a-z])\d", "All Matches", flags, 1) == "a\nb"  # one group: findall's value
    assert P.CaseConverter.execute("hello wORLD", "Capitalize").args[0] == "Hello world"
    assert P.CaseConverter.execute("hello wORLD", "Title Case").args[0] == "Hello World"
    assert P.StringTrim.execute("  x  ", "Left").args[0] == "x  "
    assert P.StringCompare.execute("ABC", "bc", "Ends With", False).args[0] is True


async def test_object_info_shapes(client):
    info = await (await client.get("/object_info")).json()
    prim = info["PrimitiveInt"]
    assert prim["python_module"] == "comfy_extras.nodes_primitive" and prim["category"] == "utils/primitive"
    assert prim["display_name"] == "Int"
    assert prim["input"]["required"]["value"] == ["INT", {"min": -sys.maxsize, "max": sys.maxsize,
                                                          "control_after_generate": True}]
    assert info["PrimitiveStringMultiline"]["input"]["required"]["value"] == ["STRING", {"multiline": True}]
    assert info["StringLength"]["output_name"] == ["length"] and info["StringLength"]["output"] == ["INT"]
    assert info["StringConcatenate"]["input"]["required"]["delimiter"] == ["STRING", {"multiline": False,
                                                                                      "default": ""}]
    rr = info["RegexReplace"]
    assert rr["python_module"] == "comfy_extras.nodes_string" and rr["description"].startswith("Find and replace")
    assert rr["input"]["optional"]["count"][1]["default"] == 0
    sw = info["ComfySwitchNode"]
    assert sw["python_module"] == "comfy_extras.nodes_logic" and sw["category"] == "logic"
    assert sw["input"]["required"]["on_true"][0] == "COMFY_MATCHTYPE_V3"
    assert sw["input"]["required"]["on_true"][1]["lazy"] is True
    assert sw["output_name"] == ["output"]
