"""Calling a node's functions over its inputs (API.md §11.9–§11.10).

Every input is a list (one element per call). Without INPUT_IS_LIST the function runs once
per index up to the longest list, shorter lists repeating their last element; with it,
once with the whole lists. Results are merged per output (OUTPUT_IS_LIST concatenates).
Coroutine functions become tasks the executor can leave pending.
"""
from __future__ import annotations

import asyncio
import contextvars
import inspect

from executor.graph import get_input_info
from executor.graph_utils import ExecutionBlocker, is_link

# Which node the current call belongs to (for progress reports from inside async nodes).
current_node: contextvars.ContextVar = contextvars.ContextVar("current_node", default=None)


def input_data(inputs: dict, class_def, unique_id, execution_list=None, dynprompt=None, extra_data=None):
    """({input name: list of values}, {names whose link value is missing}) for one node."""
    extra_data = extra_data or {}
    declared = class_def.INPUT_TYPES()
    data, missing = {}, {}
    for name, value in inputs.items():
        _, category, info = get_input_info(class_def, name, declared)
        if is_link(value) and not (info and info.get("rawLink", False)):
            cached = execution_list.get_cache(value[0], unique_id) if execution_list is not None else None
            if cached is None or cached.outputs is None or value[1] >= len(cached.outputs):
                missing[name] = True  # not computed (yet): lazy, or validation-time call
                data[name] = (None,)
                continue
            data[name] = cached.outputs[value[1]]
        elif category is not None:
            data[name] = [value]
    for name, kind in declared.get("hidden", {}).items():
        if isinstance(kind, (tuple, list)):  # V3 schema: ("UNIQUE_ID",)
            kind = kind[0]
        if kind == "PROMPT":
            data[name] = [dynprompt.get_original_prompt() if dynprompt is not None else {}]
        elif kind == "DYNPROMPT":
            data[name] = [dynprompt]
        elif kind == "EXTRA_PNGINFO":
            data[name] = [extra_data.get("extra_pnginfo")]
        elif kind == "UNIQUE_ID":
            data[name] = [unique_id]
        elif kind == "AUTH_TOKEN_COMFY_ORG":
            data[name] = [extra_data.get("auth_token_comfy_org")]
        elif kind == "API_KEY_COMFY_ORG":
            data[name] = [extra_data.get("api_key_comfy_org")]
    return data, missing


async def map_over_lists(prompt_id, unique_id, obj, data: dict, func: str, before_call=None,
                         on_blocked=None, pre_call=None) -> list:
    """Call obj.func over the input lists; results may contain pending asyncio tasks."""
    as_lists = getattr(obj, "INPUT_IS_LIST", False)
    longest = max((len(v) for v in data.values()), default=0)
    results = []

    async def call(inputs, index=None):
        if before_call is not None:
            before_call()
        blocker = None
        for v in inputs.values():
            if as_lists:
                v = next((e for e in v if isinstance(e, ExecutionBlocker)), v)
            if isinstance(v, ExecutionBlocker):
                blocker = on_blocked(v) if on_blocked else v
                break
        if blocker is not None:
            results.append(blocker)
            return
        if pre_call is not None and index is not None:
            pre_call(index)
        f = getattr(obj, func)
        token = current_node.set((prompt_id, unique_id, index))
        try:
            if inspect.iscoroutinefunction(f):
                task = asyncio.create_task(_run_in_context(f, inputs, (prompt_id, unique_id, index)))
                await asyncio.sleep(0)  # let it finish right away if it can
                results.append(task.result() if task.done() else task)
            else:
                results.append(f(**inputs))
        finally:
            current_node.reset(token)

    if as_lists:
        await call(data, 0)
    elif longest == 0:
        await call({})
    else:
        for i in range(longest):
            await call({k: v[i if len(v) > i else -1] for k, v in data.items()}, i)
    return results


async def _run_in_context(f, inputs, ctx):
    current_node.set(ctx)
    return await f(**inputs)


async def resolve(results: list) -> list:
    pending = [r for r in results if isinstance(r, asyncio.Task) and not r.done()]
    if pending:
        done, _ = await asyncio.wait(pending)
        for task in done:
            if task.exception() is not None:
                raise task.exception()
    return [r.result() if isinstance(r, asyncio.Task) else r for r in results]


async def call_over_lists(prompt_id, unique_id, class_def, data, func) -> list:
    """Helper for classmethods (VALIDATE_INPUTS, IS_CHANGED): map and wait."""
    return await resolve(await map_over_lists(prompt_id, unique_id, class_def, data, func))


def merge_results(results: list, obj) -> list:
    """Per output, one element per call; OUTPUT_IS_LIST outputs are concatenated."""
    count = len(results[0])
    is_list = getattr(obj, "OUTPUT_IS_LIST", [False] * count)
    merged = []
    for i, listed in zip(range(count), is_list):
        if listed:
            value = []
            for r in results:
                if isinstance(r[i], ExecutionBlocker):
                    value.append(r[i])
                else:
                    value.extend(r[i])
            merged.append(value)
        else:
            merged.append([r[i] for r in results])
    return merged


def _is_node_output(r) -> bool:
    return all(hasattr(r, a) for a in ("result", "ui", "expand", "block_execution")) and not isinstance(r, dict)


def _node_output_as_dict(r, blocked_result) -> dict:
    out = {}
    if r.ui is not None:
        out["ui"] = r.ui if isinstance(r.ui, dict) else r.ui.as_dict()
    result = r.result
    if r.block_execution is not None:
        result = blocked_result(ExecutionBlocker(r.block_execution))
    if r.expand is not None:
        out["expand"] = r.expand
        out["result"] = result
    elif result is not None:
        out["result"] = result
    return out


def split_returns(returns: list, obj):
    """(outputs, ui dict, has_expansion). With expansion, outputs is a list of
    (graph or None, result tuple) per call."""
    results, uis, expansions = [], [], []
    expanded = False
    blocked_result = lambda b: tuple([b] * len(obj.RETURN_TYPES))  # noqa: E731
    for r in returns:
        if _is_node_output(r):  # V3 io.NodeOutput: the same fields as attributes
            r = _node_output_as_dict(r, blocked_result)
        if isinstance(r, dict):
            if "ui" in r:
                uis.append(r["ui"])
            if "expand" in r:
                expanded = True
                result = r.get("result")
                if isinstance(result, ExecutionBlocker):
                    result = blocked_result(result)
                expansions.append((r["expand"], result))
            elif "result" in r:
                result = r.get("result")
                if isinstance(result, ExecutionBlocker):
                    result = blocked_result(result)
                results.append(result)
                expansions.append((None, result))
        else:
            if isinstance(r, ExecutionBlocker):
                r = blocked_result(r)
            results.append(r)
            expansions.append((None, r))
    if expanded:
        outputs = expansions
    elif results:
        outputs = merge_results(results, obj)
    else:
        outputs = []
    ui = {k: [y for u in uis for y in u[k]] for k in uis[0]} if uis else {}
    return outputs, ui, expanded
