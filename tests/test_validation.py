"""Validation error objects exactly as ComfyUI builds them (API.md §3, §11.2)."""
import asyncio

import pytest

from executor.validation import types_compatible, validate_prompt


def run(prompt, targets=None):
    return asyncio.run(validate_prompt("p", prompt, targets))


def node(cls, **inputs):
    return {"class_type": cls, "inputs": inputs}


def test_type_compatibility_rules():
    assert types_compatible("INT", "INT")
    assert types_compatible("*", "IMAGE") and types_compatible("IMAGE", "*")
    assert types_compatible("FLOAT", "IMAGE,FLOAT") and not types_compatible("INT", "IMAGE,FLOAT")
    assert types_compatible(["a", "b"], "COMBO")
    assert types_compatible("COMFY_MATCHTYPE_V3", "LATENT")
    assert not types_compatible("LATENT", "IMAGE")


def test_missing_class_type_and_unknown_node(test_nodes):
    ok, err, _, _ = run({"1": {"inputs": {}}})
    assert err == {"type": "invalid_prompt", "message": "Cannot execute because a node is missing the class_type property.",
                   "details": "Node ID '#1'", "extra_info": {}}
    # unknown classes fail even when unconnected
    ok, err, _, _ = run({"1": node("T_ShowInt", value=1), "9": node("Nope")})
    assert err["message"] == "Cannot execute because node Nope does not exist."


def test_partial_execution_targets(test_nodes):
    g = {"1": node("T_ShowInt", value=1), "2": node("T_ShowInt", value=2)}
    ok, _, outputs, _ = run(g, ["2"])
    assert ok and outputs == ["2"]
    ok, err, _, _ = run(g, [])
    assert err["type"] == "prompt_no_outputs"


def test_coercion_and_value_wrapping(test_nodes):
    g = {"1": node("T_IntConst", value="7"), "2": node("T_ShowInt", value=["1", 0]),
         "3": node("T_Add", a={"__value__": "3"}, b=1), "4": node("T_ShowInt", value=["3", 0])}
    ok, err, outputs, node_errors = run(g)
    assert ok and node_errors == {}
    assert g["1"]["inputs"]["value"] == 7  # converted in place
    assert g["3"]["inputs"]["a"] == 3  # {"__value__": v} unwrapped, then coerced


def test_link_errors(test_nodes):
    ok, err, _, errors = run({"2": node("T_ShowInt", value=["1", 0, 5])})
    e = errors["2"]["errors"][0]
    assert e["type"] == "bad_linked_input" and e["extra_info"]["received_value"] == ["1", 0, 5]
    ok, err, _, errors = run({"1": node("T_ListOut", n=2), "2": node("T_Add", a=["1", 0], b=1),
                              "5": node("T_Block", value=["2", 0], message="x"), "3": node("T_ShowInt", value=["5", 0])})
    assert ok
    mismatch = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
                "2": node("T_ShowInt", value=["1", 0])}
    ok, err, _, errors = run(mismatch)
    e = errors["2"]["errors"][0]
    assert e["type"] == "return_type_mismatch"
    assert e["details"] == "value, received_type(IMAGE) mismatch input_type(INT)"
    ok, err, _, errors = run({"2": node("T_ShowInt", value=["missing", 0])})
    assert not ok and errors["2"]["errors"][0]["type"] == "exception_during_validation"


def test_static_cycle_is_rejected(test_nodes):
    g = {"1": node("T_Add", a=["2", 0], b=1), "2": node("T_Add", a=["1", 0], b=1), "3": node("T_ShowInt", value=["2", 0])}
    ok, err, _, errors = run(g)
    assert not ok and err["type"] == "prompt_outputs_failed_validation"


def test_upstream_failure_reported_on_the_culprit_only(test_nodes):
    g = {"1": node("T_IntConst", value=-500), "2": node("T_Add", a=["1", 0], b=1), "3": node("T_ShowInt", value=["2", 0])}
    ok, err, _, errors = run(g)
    assert list(errors) == ["1"] and errors["1"]["dependent_outputs"] == ["3"]
    assert err["details"] == ""  # only errors on the output node itself are listed
    e = errors["1"]["errors"][0]
    assert e == {"type": "value_smaller_than_min", "message": "Value -500 smaller than min of -100", "details": "value",
                 "extra_info": {"input_name": "value", "input_config": ("INT", {"default": 0, "min": -100, "max": 1000}),
                                "received_value": -500}}


def test_combo_errors_hide_long_lists(test_nodes):
    from nodes import registry

    class Pick:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"short": (["a", "b"],), "long": ([str(i) for i in range(30)],)}}
        RETURN_TYPES = ()
        OUTPUT_NODE = True
        FUNCTION = "run"

    registry.register({"T_Pick": Pick})
    try:
        ok, err, _, errors = run({"1": node("T_Pick", short="z", long="99")})
        # ComfyUI walks a set of input names, so the order of the two errors is not part of the contract
        short, long_ = sorted(errors["1"]["errors"], key=lambda e: e["details"], reverse=True)
        assert short["details"] == "short: 'z' not in ['a', 'b']" and short["extra_info"]["input_config"] is not None
        assert long_["details"] == "long: '99' not in (list of length 30)" and long_["extra_info"]["input_config"] is None
    finally:
        registry.NODE_CLASS_MAPPINGS.pop("T_Pick", None)


def test_validate_inputs_with_input_types(test_nodes):
    from nodes import registry

    class AnyIn:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"x": ("FLOAT",)}}
        RETURN_TYPES = ()
        OUTPUT_NODE = True
        FUNCTION = "run"

        @classmethod
        def VALIDATE_INPUTS(cls, input_types):
            return True if input_types["x"] in ("INT", "FLOAT") else "numbers only"

    registry.register({"T_AnyIn": AnyIn})
    try:
        ok, _, _, _ = run({"1": node("T_IntConst", value=1), "2": node("T_AnyIn", x=["1", 0])})
        assert ok  # the type check is left to the node when it takes input_types
        bad = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
               "2": node("T_AnyIn", x=["1", 0])}
        ok, _, _, errors = run(bad)
        assert errors["2"]["errors"][0]["details"] == "input_types - numbers only"
    finally:
        registry.NODE_CLASS_MAPPINGS.pop("T_AnyIn", None)
