"""Validating a prompt before it is queued (API.md §3 and §11.2).

Each selected output node is checked, and through its links every node it depends on
(each node once). Errors use ComfyUI's exact types, messages, details and extra_info.
Constant inputs are converted in place (INT/FLOAT/STRING/BOOLEAN) and {"__value__": [...]}
wrappers are unwrapped, so the queued prompt holds what the nodes will receive.
Declared inputs are checked in declaration order (ComfyUI's order is a set's, i.e. arbitrary).
"""
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
CONVERSIONS = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def full_type_name(cls) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def types_compatible(received, expected, strict: bool = False) -> bool:
    """Equal, '*' on either side, the match-type marker, a list feeding COMBO, or
    comma-separated type sets that overlap (all received in expected when strict)."""
    if not received != expected:  # `!=`, so str subclasses overriding __ne__ (legacy "any") work
        return True
    if ANY in (received, expected) or MATCH_TYPE in (received, expected):
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


class _NodeCheck:
    """Validation of one node: its own errors, and whether an ancestor failed."""

    def __init__(self, prompt_id, prompt, node_id, results):
        self.prompt_id, self.prompt, self.node_id, self.results = prompt_id, prompt, node_id, results
        self.inputs = prompt[node_id]["inputs"]
        self.class_def = NODE_CLASS_MAPPINGS[prompt[node_id]["class_type"]]
        self.declared = self.class_def.INPUT_TYPES()
        self.errors: list = []
        self.ancestors_ok = True
        self.received_types: dict = {}
        self.custom = getattr(self.class_def, "VALIDATE_INPUTS", None)
        spec = inspect.getfullargspec(self.custom) if self.custom is not None else None
        self.custom_args = spec.args if spec else []
        self.custom_takes_all = bool(spec and spec.varkw is not None)

    def handled_by_node(self, name) -> bool:
        return name in self.custom_args or self.custom_takes_all

    async def run(self):
        names = list(self.declared.get("required", {})) + [
            n for n in self.declared.get("optional", {}) if n not in self.declared.get("required", {})]
        for name in names:
            input_type, category, options = get_input_info(self.class_def, name, self.declared)
            if name not in self.inputs:
                if category == "required":
                    self.errors.append(_error("required_input_missing", "Required input is missing", name,
                                              input_name=name))
                continue
            config = (input_type, options)
            if isinstance(self.inputs[name], list):
                await self.check_link(name, input_type, config)
            else:
                self.check_constant(name, input_type, options, config)
        if self.custom_args or self.custom_takes_all:
            await self.run_custom_validator()
        ok = not self.errors and self.ancestors_ok
        return (True, [], self.node_id) if ok else (False, self.errors, self.node_id)

    async def check_link(self, name, input_type, config):
        link = self.inputs[name]
        if len(link) != 2:
            self.errors.append(_error("bad_linked_input",
                                      "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                                      name, input_name=name, input_config=config, received_value=link))
            return
        source_id, socket = link
        received = NODE_CLASS_MAPPINGS[self.prompt[source_id]["class_type"]].RETURN_TYPES[socket]
        self.received_types[name] = received
        if "input_types" not in self.custom_args and not types_compatible(received, input_type):
            self.errors.append(_error("return_type_mismatch", "Return type mismatch between linked nodes",
                                      f"{name}, received_type({received}) mismatch input_type({input_type})",
                                      input_name=name, input_config=config, received_type=received,
                                      linked_node=link))
            return
        try:
            if (await check_node(self.prompt_id, self.prompt, source_id, self.results))[0] is False:
                self.ancestors_ok = False
        except Exception as ex:  # e.g. a source that does not exist, recursion through a cycle
            self.ancestors_ok = False
            typ, _, tb = sys.exc_info()
            self.results[source_id] = (False, [_error(
                "exception_during_inner_validation", "Exception when validating inner node", str(ex),
                input_name=name, input_config=config, exception_message=str(ex), exception_type=full_type_name(typ),
                traceback=traceback.format_tb(tb), linked_node=link)], source_id)

    def check_constant(self, name, input_type, options, config):
        value = self.inputs[name]
        try:
            if isinstance(value, dict) and "__value__" in value:  # a list constant, wrapped
                value = self.inputs[name] = value["__value__"]
            if isinstance(input_type, str) and input_type in CONVERSIONS:
                value = self.inputs[name] = CONVERSIONS[input_type](value)
        except Exception as ex:
            self.errors.append(_error("invalid_input_type", f"Failed to convert an input value to a {input_type} value",
                                      f"{name}, {value}, {ex}", input_name=name, input_config=config,
                                      received_value=value, exception_message=str(ex)))
            return
        if self.handled_by_node(name):
            return
        if "min" in options and value < options["min"]:
            self.errors.append(_error("value_smaller_than_min", f"Value {value} smaller than min of {options['min']}",
                                      name, input_name=name, input_config=config, received_value=value))
        elif "max" in options and value > options["max"]:
            self.errors.append(_error("value_bigger_than_max", f"Value {value} bigger than max of {options['max']}",
                                      name, input_name=name, input_config=config, received_value=value))
        elif isinstance(input_type, list) or input_type == COMBO:
            choices = options.get("options", []) if input_type == COMBO else input_type
            if value not in choices:
                many = len(choices) > 20  # long model lists are not echoed back
                listing = f"(list of length {len(choices)})" if many else str(choices)
                self.errors.append(_error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listing}",
                                          input_name=name, input_config=None if many else config,
                                          received_value=value))

    async def run_custom_validator(self):
        """VALIDATE_INPUTS with the inputs it names (linked ones as None), mapped over lists."""
        values, _ = input_data(self.inputs, self.class_def, self.node_id)
        passed = {k: v for k, v in values.items() if self.handled_by_node(k)}
        if "input_types" in self.custom_args:
            passed["input_types"] = [self.received_types]
        answers = await call_over_lists(self.prompt_id, self.node_id, self.class_def, passed, "VALIDATE_INPUTS")
        for name in passed:
            for answer in answers:
                if answer is True or isinstance(answer, ExecutionBlocker):
                    continue
                details = name if answer is False else f"{name} - {answer}"
                self.errors.append(_error("custom_validation_failed", "Custom validation failed for node", details,
                                          input_name=name))


async def check_node(prompt_id, prompt, node_id, results: dict):
    """(ok, errors, node_id) for one node, memoised in `results`."""
    if node_id not in results:
        results[node_id] = await _NodeCheck(prompt_id, prompt, node_id, results).run()
    return results[node_id]


# kept under ComfyUI's name for code that imports it
validate_inputs = check_node


def _selected_outputs(prompt, targets):
    """(output node ids, None) or (None, top-level error) — every node must exist first."""
    outputs = []
    for node_id, node in prompt.items():
        if "class_type" not in node:
            return None, _error("invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                                f"Node ID '#{node_id}'")
        class_def = NODE_CLASS_MAPPINGS.get(node["class_type"])
        if class_def is None:
            return None, _error("invalid_prompt", f"Cannot execute because node {node['class_type']} does not exist.",
                                f"Node ID '#{node_id}'")
        if getattr(class_def, "OUTPUT_NODE", False) is True and (targets is None or node_id in targets):
            outputs.append(node_id)
    if not outputs:
        return None, _error("prompt_no_outputs", "Prompt has no outputs", "")
    return outputs, None


async def validate_prompt(prompt_id, prompt: dict, partial_execution_targets=None):
    """(ok, error, good_output_ids, node_errors) per API.md §3."""
    outputs, error = _selected_outputs(prompt, partial_execution_targets)
    if error is not None:
        return False, error, [], {}
    good, failed, node_errors, results = [], [], {}, {}
    for out in outputs:
        try:
            ok, reasons, _ = await check_node(prompt_id, prompt, out, results)
        except Exception as ex:
            typ, _, tb = sys.exc_info()
            ok, reasons = False, [_error("exception_during_validation", "Exception when validating node", str(ex),
                                         exception_type=full_type_name(typ), traceback=traceback.format_tb(tb))]
            results[out] = (False, reasons, out)
        if ok is True:
            good.append(out)
            continue
        log.error("Failed to validate prompt for output %s: %s", out,
                  "; ".join(f"{r['message']}: {r['details']}" for r in reasons) or "an input failed")
        failed.append(reasons)
        for node_id, (node_ok, node_reasons, _) in results.items():
            # nodes that only inherit an upstream failure have no errors of their own: not listed
            if node_ok is not True and node_reasons:
                entry = node_errors.setdefault(node_id, {"errors": node_reasons, "dependent_outputs": [],
                                                         "class_type": prompt[node_id]["class_type"]})
                entry["dependent_outputs"].append(out)
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for reasons in failed for e in reasons)
        return False, _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details), [], node_errors
    return True, None, good, node_errors
