"""Validating a prompt before it is queued (API.md §3 and §11.2): each selected output is
checked through its links; errors use ComfyUI's exact types, messages and details.
Constant inputs are coerced (INT/FLOAT/STRING/BOOLEAN) in place in the prompt."""
from __future__ import annotations

import inspect
import logging
import sys
import traceback

from executor.graph import get_input_info
from executor.graph_utils import ExecutionBlocker
from executor.node_calls import call_over_lists, input_data
from nodes.registry import NODE_CLASS_MAPPINGS

log = logging.getLogger(__name__)

ANY, MATCH_TYPE, COMBO = "*", "COMFY_MATCHTYPE_V3", "COMBO"


def full_type_name(cls) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def types_compatible(received, expected, strict: bool = False) -> bool:
    """Equal, '*' on either side, the match-type marker, a list feeding COMBO, or
    comma-separated type sets that overlap (all received in expected when strict)."""
    if not received != expected:  # `!=`, so str subclasses overriding __ne__ (legacy "any") work
        return True
    if received == ANY or expected == ANY or received == MATCH_TYPE or expected == MATCH_TYPE:
        return True
    if isinstance(received, list) and expected == COMBO:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    if ANY in got or ANY in want:
        return True
    return got <= want if strict else bool(got & want)


def _error(type_, message, details, **extra):
    return {"type": type_, "message": message, "details": details, "extra_info": extra}


def _coerce(input_type, value):
    if input_type == "INT":
        return int(value)
    if input_type == "FLOAT":
        return float(value)
    if input_type == "STRING":
        return str(value)
    if input_type == "BOOLEAN":
        return bool(value)
    return value


async def validate_inputs(prompt_id, prompt, node_id, validated: dict):
    """(ok, errors, node_id), memoised in `validated`."""
    if node_id in validated:
        return validated[node_id]
    inputs = prompt[node_id]["inputs"]
    class_def = NODE_CLASS_MAPPINGS[prompt[node_id]["class_type"]]
    class_inputs = class_def.INPUT_TYPES()
    errors, valid = [], True
    custom = getattr(class_def, "VALIDATE_INPUTS", None)
    custom_args, custom_kwargs = [], False
    if custom is not None:
        spec = inspect.getfullargspec(custom)
        custom_args, custom_kwargs = spec.args, spec.varkw is not None
    received_types = {}
    declared = set(class_inputs.get("required", {})) | set(class_inputs.get("optional", {}))

    for name in declared:
        input_type, category, options = get_input_info(class_def, name, class_inputs)
        if name not in inputs:
            if category == "required":
                errors.append(_error("required_input_missing", "Required input is missing", name, input_name=name))
            continue
        value = inputs[name]
        info = (input_type, options)
        if isinstance(value, list):
            if len(value) != 2:
                errors.append(_error("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                                     name, input_name=name, input_config=info, received_value=value))
                continue
            src_id = value[0]
            src_class = NODE_CLASS_MAPPINGS[prompt[src_id]["class_type"]]
            received = src_class.RETURN_TYPES[value[1]]
            received_types[name] = received
            if "input_types" not in custom_args and not types_compatible(received, input_type):
                errors.append(_error("return_type_mismatch", "Return type mismatch between linked nodes",
                                     f"{name}, received_type({received}) mismatch input_type({input_type})",
                                     input_name=name, input_config=info, received_type=received, linked_node=value))
                continue
            try:
                ok = await validate_inputs(prompt_id, prompt, src_id, validated)
                if ok[0] is False:
                    valid = False
            except Exception as ex:
                typ, _, tb = sys.exc_info()
                valid = False
                validated[src_id] = (False, [_error(
                    "exception_during_inner_validation", "Exception when validating inner node", str(ex),
                    input_name=name, input_config=info, exception_message=str(ex),
                    exception_type=full_type_name(typ), traceback=traceback.format_tb(tb), linked_node=value)], src_id)
            continue
        try:
            if isinstance(value, dict) and "__value__" in value:  # a list constant, wrapped
                value = value["__value__"]
                inputs[name] = value
            value = _coerce(input_type, value)
            if input_type in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                inputs[name] = value
        except Exception as ex:
            errors.append(_error("invalid_input_type", f"Failed to convert an input value to a {input_type} value",
                                 f"{name}, {value}, {ex}", input_name=name, input_config=info, received_value=value,
                                 exception_message=str(ex)))
            continue
        if name in custom_args or custom_kwargs:
            continue  # the node validates this input itself
        if "min" in options and value < options["min"]:
            errors.append(_error("value_smaller_than_min", f"Value {value} smaller than min of {options['min']}",
                                 name, input_name=name, input_config=info, received_value=value))
            continue
        if "max" in options and value > options["max"]:
            errors.append(_error("value_bigger_than_max", f"Value {value} bigger than max of {options['max']}",
                                 name, input_name=name, input_config=info, received_value=value))
            continue
        if isinstance(input_type, list) or input_type == COMBO:
            choices = options.get("options", []) if input_type == COMBO else input_type
            if value not in choices:
                big = len(choices) > 20  # don't echo huge model lists back
                listing = f"(list of length {len(choices)})" if big else str(choices)
                errors.append(_error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listing}",
                                     input_name=name, input_config=None if big else info, received_value=value))
                continue

    if custom_args or custom_kwargs:
        data, _ = input_data(inputs, class_def, node_id)
        passed = {k: v for k, v in data.items() if k in custom_args or custom_kwargs}
        if "input_types" in custom_args:
            passed["input_types"] = [received_types]
        results = await call_over_lists(prompt_id, node_id, class_def, passed, "VALIDATE_INPUTS")
        for name in passed:
            for r in results:
                if r is not True and not isinstance(r, ExecutionBlocker):
                    details = name if r is False else f"{name} - {r}"
                    errors.append(_error("custom_validation_failed", "Custom validation failed for node", details,
                                         input_name=name))

    result = (False, errors, node_id) if errors or valid is not True else (True, [], node_id)
    validated[node_id] = result
    return result


async def validate_prompt(prompt_id, prompt: dict, partial_execution_targets=None):
    """(ok, error, good_output_ids, node_errors) per API.md §3."""
    outputs = set()
    for node_id, node in prompt.items():
        if "class_type" not in node:
            return False, _error("invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                                 f"Node ID '#{node_id}'"), [], {}
        class_def = NODE_CLASS_MAPPINGS.get(node["class_type"])
        if class_def is None:
            return False, _error("invalid_prompt", f"Cannot execute because node {node['class_type']} does not exist.",
                                 f"Node ID '#{node_id}'"), [], {}
        if getattr(class_def, "OUTPUT_NODE", False) is True:
            if partial_execution_targets is None or node_id in partial_execution_targets:
                outputs.add(node_id)
    if not outputs:
        return False, _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}

    good, failed, node_errors, validated = set(), [], {}, {}
    for out in outputs:
        try:
            ok, reasons, _ = await validate_inputs(prompt_id, prompt, out, validated)
        except Exception as ex:
            typ, _, tb = sys.exc_info()
            ok = False
            reasons = [_error("exception_during_validation", "Exception when validating node", str(ex),
                              exception_type=full_type_name(typ), traceback=traceback.format_tb(tb))]
            validated[out] = (False, reasons, out)
        if ok is True:
            good.add(out)
            continue
        log.error("Failed to validate prompt for output %s: %s", out,
                  "; ".join(f"{r['message']}: {r['details']}" for r in reasons))
        failed.append((out, reasons))
        for node_id, (node_ok, node_reasons, _) in validated.items():
            # downstream nodes inherit the failure but have no errors of their own: not reported
            if node_ok is not True and node_reasons:
                entry = node_errors.setdefault(node_id, {"errors": node_reasons, "dependent_outputs": [],
                                                         "class_type": prompt[node_id]["class_type"]})
                entry["dependent_outputs"].append(out)
    if not good:
        lines = [f"{e['message']}: {e['details']}" for _, reasons in failed for e in reasons]
        return False, _error("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                             "\n".join(lines)), [], node_errors
    return True, None, list(good), node_errors
