"""Calling a node's functions over its inputs (API.md §11.8–§11.10).

Every input value is a list with one element per call. A node without INPUT_IS_LIST is
called once per index up to the longest list (shorter lists repeat their last element);
with INPUT_IS_LIST it is called once with the whole lists. A call that would receive an
ExecutionBlocker is skipped and yields the blocker instead. Coroutine functions become
tasks the executor may leave running while other nodes go ahead.
"""
from __future__ import annotations

import asyncio
import contextvars
import inspect

from executor.graph import get_input_info
from executor.graph_utils import ExecutionBlocker, is_link

# (prompt id, node id, list index) of the call running now: progress reports from inside a
# node (async ones included) find their node through it.
current_node: contextvars.ContextVar = contextvars.ContextVar("current_node", default=None)

HIDDEN_FROM_EXTRA_DATA = {"EXTRA_PNGINFO": "extra_pnginfo", "AUTH_TOKEN_COMFY_ORG": "auth_token_comfy_org",
                          "API_KEY_COMFY_ORG": "api_key_comfy_org"}


def _hidden_value(kind, unique_id, dynprompt, extra_data):
    if kind == "PROMPT":
        return dynprompt.get_original_prompt() if dynprompt is not None else {}
    if kind == "DYNPROMPT":
        return dynprompt
    if kind == "UNIQUE_ID":
        return unique_id
    return extra_data.get(HIDDEN_FROM_EXTRA_DATA[kind])


def input_data(inputs: dict, class_def, unique_id, execution_list=None, dynprompt=None, extra_data=None):
    """({input name: list of values}, {names whose linked value is not available}).

    Linked values come from the execution list (missing while a lazy source has not run,
    and always at validation time); constants only for declared inputs; then hidden inputs.
    Inputs declared rawLink receive the link itself."""
    declared = class_def.INPUT_TYPES()
    values, missing = {}, {}
    for name, value in inputs.items():
        _, category, options = get_input_info(class_def, name, declared)
        if is_link(value) and not (options or {}).get("rawLink", False):
            entry = execution_list.get_cache(value[0], unique_id) if execution_list is not None else None
            if entry is None or entry.outputs is None or value[1] >= len(entry.outputs):
                missing[name] = True
                values[name] = (None,)
            else:
                values[name] = entry.outputs[value[1]]
        elif category is not None:
            values[name] = [value]
    for name, kind in declared.get("hidden", {}).items():
        kind = kind[0] if isinstance(kind, (tuple, list)) else kind  # V3 schema form: ("UNIQUE_ID",)
        if kind in ("PROMPT", "DYNPROMPT", "UNIQUE_ID") or kind in HIDDEN_FROM_EXTRA_DATA:
            values[name] = [_hidden_value(kind, unique_id, dynprompt, extra_data or {})]
    return values, missing


def plan_calls(values: dict, input_is_list: bool) -> list:
    """[(list index or None, keyword arguments)] — one entry per call."""
    if input_is_list:
        return [(0, values)]
    count = max((len(v) for v in values.values()), default=0)
    if count == 0:
        return [(None, {})]
    return [(i, {k: v[min(i, len(v) - 1)] for k, v in values.items()}) for i in range(count)]


def _blocker_in(kwargs: dict, input_is_list: bool):
    for value in kwargs.values():
        if input_is_list:
            value = next((e for e in value if isinstance(e, ExecutionBlocker)), value)
        if isinstance(value, ExecutionBlocker):
            return value
    return None


async def _in_context(func, kwargs, ctx):
    current_node.set(ctx)
    return await func(**kwargs)


async def map_over_lists(prompt_id, unique_id, obj, data: dict, func: str, before_call=None,
                         on_blocked=None, pre_call=None) -> list:
    """Call obj.<func> per plan_calls; the list of results may hold still-running tasks.

    before_call() runs before every call (the interrupt check); on_blocked(blocker) turns a
    blocker met on an input into the call's result; pre_call(index) runs right before a call."""
    as_lists = getattr(obj, "INPUT_IS_LIST", False)
    results = []
    for index, kwargs in plan_calls(data, as_lists):
        if before_call is not None:
            before_call()
        blocker = _blocker_in(kwargs, as_lists)
        if blocker is not None:
            results.append(on_blocked(blocker) if on_blocked is not None else blocker)
            continue
        if pre_call is not None and index is not None:
            pre_call(index)
        function = getattr(obj, func)
        ctx = (prompt_id, unique_id, index)
        if inspect.iscoroutinefunction(function):
            task = asyncio.create_task(_in_context(function, kwargs, ctx))
            await asyncio.sleep(0)  # a coroutine that never awaits finishes right here
            results.append(task.result() if task.done() else task)
        else:
            token = current_node.set(ctx)
            try:
                results.append(function(**kwargs))
            finally:
                current_node.reset(token)
    return results


async def resolve(results: list) -> list:
    """Wait for the tasks among the results; the first failure is raised."""
    running = [r for r in results if isinstance(r, asyncio.Task) and not r.done()]
    if running:
        finished, _ = await asyncio.wait(running)
        for task in finished:
            if task.exception() is not None:
                raise task.exception()
    return [r.result() if isinstance(r, asyncio.Task) else r for r in results]


async def call_over_lists(prompt_id, unique_id, class_def, data, func) -> list:
    """For classmethods (VALIDATE_INPUTS, IS_CHANGED): map and wait."""
    return await resolve(await map_over_lists(prompt_id, unique_id, class_def, data, func))


def merge_results(results: list, obj) -> list:
    """Per output socket, the list of values over all calls: one element per call, or the
    calls' lists concatenated where OUTPUT_IS_LIST says so (a blocker stays one element)."""
    sockets = len(results[0])
    listed = list(getattr(obj, "OUTPUT_IS_LIST", ()))[:sockets]
    listed += [False] * (sockets - len(listed)) if not hasattr(obj, "OUTPUT_IS_LIST") else []
    merged = []
    for socket, is_list in enumerate(listed):
        if not is_list:
            merged.append([r[socket] for r in results])
            continue
        flat = []
        for r in results:
            if isinstance(r[socket], ExecutionBlocker):
                flat.append(r[socket])
            else:
                flat.extend(r[socket])
        merged.append(flat)
    return merged


def _as_dict(r, sockets: int):
    """A V3 io.NodeOutput (result/ui/expand/block_execution attributes) as the V1 dict form."""
    out = {}
    if r.ui is not None:
        out["ui"] = r.ui if isinstance(r.ui, dict) else r.ui.as_dict()
    result = r.result
    if r.block_execution is not None:
        result = ExecutionBlocker(r.block_execution)
    if r.expand is not None:
        out["expand"], out["result"] = r.expand, result
    elif r.result is not None:
        out["result"] = result
    return out


def _is_node_output(r) -> bool:
    return not isinstance(r, dict) and all(hasattr(r, a) for a in ("result", "ui", "expand", "block_execution"))


def split_returns(returns: list, obj):
    """(outputs, merged ui dict, expanded?) from the per-call return values.

    Without expansion, outputs is the per-socket lists of merge_results; with it, a list of
    (graph or None, result tuple) per call, resolved once the generated nodes ran."""
    sockets = len(obj.RETURN_TYPES)
    per_call, uis, expanded = [], [], False

    def spread(result):
        return tuple([result] * sockets) if isinstance(result, ExecutionBlocker) else result

    for r in returns:
        if _is_node_output(r):
            r = _as_dict(r, sockets)
        if not isinstance(r, dict):
            per_call.append((None, spread(r)))
            continue
        if "ui" in r:
            uis.append(r["ui"])
        if "expand" in r:
            expanded = True
            per_call.append((r["expand"], spread(r.get("result"))))
        elif "result" in r:
            per_call.append((None, spread(r.get("result"))))
    ui = {key: [item for u in uis for item in u[key]] for key in uis[0]} if uis else {}
    if expanded:
        return per_call, ui, True
    results = [result for _, result in per_call]
    return (merge_results(results, obj) if results else []), ui, False
