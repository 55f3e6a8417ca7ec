"""Running one prompt (API.md §10.5, §11.3–§11.12): schedule the needed nodes, reuse cached
results, call the node functions, handle lazy inputs, expansion, async nodes and
ExecutionBlocker, and report everything through the event sink."""
from __future__ import annotations

import asyncio
import logging
import sys
import time
import traceback

import torch

from executor import node_calls
from executor.cache import CacheSet, IsChangedCache
from executor.graph import DynamicPrompt, ExecutionList
from executor.graph_utils import ExecutionBlocker, GraphBuilder, is_link
from executor.progress import ProgressReporter
from executor.validation import full_type_name
from models import progress as model_progress
from models.progress import InterruptProcessingException
from nodes.registry import NODE_CLASS_MAPPINGS

log = logging.getLogger(__name__)

SUCCESS, FAILURE, PENDING = "success", "failure", "pending"
OOM_TIP = ("This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before you might "
           "have accidentally set the batch_size to a large number.")


class CacheEntry:
    __slots__ = ("ui", "outputs")

    def __init__(self, ui, outputs):
        self.ui, self.outputs = ui, outputs


def format_value(x):
    if x is None or isinstance(x, (int, float, bool, str)):
        return x
    return str(x)


class _Run:
    """State of one prompt's execution."""

    def __init__(self, executor, prompt_id, dynprompt, extra_data, client_id):
        self.ex = executor
        self.sink = executor.sink
        self.prompt_id = prompt_id
        self.dynprompt = dynprompt
        self.extra_data = extra_data
        self.client_id = client_id
        self.caches = executor.caches
        self.executed: set = set()
        self.pending_expansions: dict = {}
        self.pending_async: dict = {}
        self.ui_outputs: dict = {}
        self.progress = ProgressReporter(self.sink, prompt_id, dynprompt, client_id)

    def send(self, event, data):
        """Client-only events: dropped when the prompt has no client."""
        if self.client_id is not None:
            self.sink.send(event, data, self.client_id)

    async def execute(self, node_id, execution_list: ExecutionList):
        dp = self.dynprompt
        real_id, display_id = dp.get_real_node_id(node_id), dp.get_display_node_id(node_id)
        parent_id = dp.get_parent_node_id(node_id)
        node = dp.get_node(node_id)
        class_type, inputs = node["class_type"], node["inputs"]
        class_def = NODE_CLASS_MAPPINGS[class_type]

        cached = self.caches.outputs.get(node_id)
        if cached is not None:  # a cached output node the scheduler reached: replay its UI
            self.send("executed", {"node": node_id, "display_node": display_id,
                                   "output": (cached.ui or {}).get("output"), "prompt_id": self.prompt_id})
            if cached.ui is not None:
                self.ui_outputs[node_id] = cached.ui
            self.progress.finish(node_id)
            execution_list.cache_update(node_id, cached)
            return SUCCESS, None, None

        data = None
        try:
            if node_id in self.pending_async:
                results = [r.result() if isinstance(r, asyncio.Task) else r for r in self.pending_async.pop(node_id)]
                outputs, ui, expanded = node_calls.split_returns(results, class_def)
            elif node_id in self.pending_expansions:
                outputs = node_calls.merge_results(self._resolve_expansion(node_id, execution_list), class_def)
                ui, expanded = {}, False
            else:
                self.progress.start(node_id)
                data, missing = node_calls.input_data(inputs, class_def, node_id, execution_list, dp, self.extra_data)
                self.send("executing", {"node": node_id, "display_node": display_id, "prompt_id": self.prompt_id})
                self.ex.current_node = display_id
                obj = self.caches.objects.get(node_id)
                if obj is None:
                    obj = class_def()
                    self.caches.objects.set(node_id, obj)
                if getattr(obj, "check_lazy_status", None) is not None:
                    wanted = await node_calls.resolve(await node_calls.map_over_lists(
                        self.prompt_id, node_id, obj, data, "check_lazy_status", before_call=model_progress.check_interrupted))
                    wanted = set(sum([w for w in wanted if isinstance(w, list)], []))
                    wanted = [w for w in wanted if isinstance(w, str) and (w not in data or w in missing)]
                    if wanted:
                        for name in wanted:
                            execution_list.make_input_strong_link(node_id, name)
                        return PENDING, None, None

                def on_blocked(block):
                    if block.message is not None:
                        self.sink.send("execution_error", {
                            "prompt_id": self.prompt_id, "node_id": node_id, "node_type": class_type,
                            "executed": list(self.executed), "exception_message": f"Execution Blocked: {block.message}",
                            "exception_type": "ExecutionBlocked", "traceback": [], "current_inputs": [],
                            "current_outputs": []}, self.client_id)
                        return ExecutionBlocker(None)
                    return block

                returns = await node_calls.map_over_lists(
                    self.prompt_id, node_id, obj, data, obj.FUNCTION, before_call=model_progress.check_interrupted,
                    on_blocked=on_blocked, pre_call=lambda i: GraphBuilder.set_default_prefix(node_id, i, 0))
                if any(isinstance(r, asyncio.Task) and not r.done() for r in returns):
                    self.pending_async[node_id] = returns
                    unblock = execution_list.add_external_block(node_id)

                    async def wait_then_unblock():
                        await asyncio.gather(*[r for r in returns if isinstance(r, asyncio.Task)],
                                             return_exceptions=True)
                        unblock()
                    asyncio.create_task(wait_then_unblock())
                    return PENDING, None, None
                outputs, ui, expanded = node_calls.split_returns(returns, class_def)

            if ui:
                self.ui_outputs[node_id] = {"meta": {"node_id": node_id, "display_node": display_id,
                                                     "parent_node": parent_id, "real_node_id": real_id},
                                            "output": ui}
                self.send("executed", {"node": node_id, "display_node": display_id, "output": ui,
                                       "prompt_id": self.prompt_id})
            if expanded:
                await self._expand(node_id, outputs, execution_list)
                return PENDING, None, None
            entry = CacheEntry(self.ui_outputs.get(node_id), outputs)
            execution_list.cache_update(node_id, entry)
            self.caches.outputs.set(node_id, entry)
        except InterruptProcessingException as iex:
            log.info("Processing interrupted")
            return FAILURE, {"node_id": real_id}, iex
        except Exception as ex:
            typ, _, tb = sys.exc_info()
            formatted = {k: [format_value(x) for x in v] for k, v in (data or {}).items()}
            log.error("!!! Exception during processing !!! %s\n%s", ex, traceback.format_exc())
            tips = ""
            if isinstance(ex, torch.OutOfMemoryError):
                tips = OOM_TIP
                self.ex.on_out_of_memory()
            return FAILURE, {"node_id": real_id, "exception_message": f"{ex}\n{tips}",
                             "exception_type": full_type_name(typ), "traceback": traceback.format_tb(tb),
                             "current_inputs": formatted}, ex
        self.progress.finish(node_id)
        self.executed.add(node_id)
        return SUCCESS, None, None

    def _resolve_expansion(self, node_id, execution_list) -> list:
        """The expanding node's results, with links to its generated nodes replaced by values."""
        resolved = []
        for from_graph, result in self.pending_expansions.pop(node_id):
            if not from_graph:
                resolved.append(result)
                continue
            values = []
            for r in result:
                if is_link(r):
                    values.extend(execution_list.get_cache(r[0], node_id).outputs[r[1]])
                else:
                    values.append(r)
            resolved.append(tuple(values))
        return resolved

    async def _expand(self, node_id, outputs, execution_list):
        new_ids, new_outputs, new_links, results = [], [], [], []
        for graph, node_outputs in outputs:
            if graph is None:
                results.append((False, node_outputs))
                continue
            for new_id, info in graph.items():
                new_ids.append(new_id)
                self.dynprompt.add_ephemeral_node(new_id, info, node_id, info.get("override_display_id", node_id))
                if getattr(NODE_CLASS_MAPPINGS[info["class_type"]], "OUTPUT_NODE", False) is True:
                    new_outputs.append(new_id)
            new_links += [(o[0], o[1]) for o in node_outputs if is_link(o)]
            results.append((True, node_outputs))
        new_ids = set(new_ids)
        for cache in self.caches.all:
            sub = await cache.ensure_subcache_for(node_id, new_ids)
            sub.clean_unused()
        for out in new_outputs:
            execution_list.add_node(out)
            execution_list.cache_link(out, node_id)
        for src, socket in new_links:
            execution_list.add_strong_link(src, socket, node_id)
        self.pending_expansions[node_id] = results


class PromptExecutor:
    """Executes prompts one at a time, keeping caches between them."""

    def __init__(self, sink, cache_mode: str = "classic", lru_size: int = 0, on_out_of_memory=None):
        self.sink = sink
        self.cache_mode, self.lru_size = cache_mode, lru_size
        self.on_out_of_memory = on_out_of_memory or (lambda: None)
        self.current_node = None
        self.reset()

    def reset(self):
        self.caches = CacheSet(self.cache_mode, self.lru_size)
        self.status_messages: list = []
        self.success = True
        self.history_result: dict = {"outputs": {}, "meta": {}}

    def add_message(self, event, data, broadcast: bool, client_id):
        data = {**data, "timestamp": int(time.time() * 1000)}
        self.status_messages.append((event, data))
        if client_id is not None or broadcast:
            self.sink.send(event, data, client_id)

    def execute(self, prompt, prompt_id, extra_data=None, execute_outputs=()):
        asyncio.run(self.execute_async(prompt, prompt_id, extra_data or {}, list(execute_outputs)))

    async def execute_async(self, prompt, prompt_id, extra_data, execute_outputs):
        from models.sampling import preview
        preview.set_prompt_override(extra_data.get("preview_method"))
        model_progress.request_interrupt(False)
        client_id = extra_data.get("client_id")
        self.status_messages = []
        self.add_message("execution_start", {"prompt_id": prompt_id}, False, client_id)
        with torch.inference_mode():
            dynprompt = DynamicPrompt(prompt)
            run = _Run(self, prompt_id, dynprompt, extra_data, client_id)
            model_progress.set_progress_hook(run.progress.update)
            try:
                await self._run(run, prompt, prompt_id, execute_outputs, client_id)
            finally:
                model_progress.set_progress_hook(None)
                self.current_node = None
                preview.set_prompt_override(None)

    async def _run(self, run, prompt, prompt_id, execute_outputs, client_id):
        dynprompt = run.dynprompt
        is_changed = IsChangedCache(prompt_id, dynprompt, self._fingerprint)
        for cache in self.caches.all:
            await cache.set_prompt(dynprompt, prompt.keys(), is_changed)
            cache.clean_unused()
        cached = [n for n in prompt if self.caches.outputs.get(n) is not None]
        self.add_message("execution_cached", {"nodes": cached, "prompt_id": prompt_id}, False, client_id)
        execution_list = ExecutionList(dynprompt, self.caches.outputs)
        current_outputs = self.caches.outputs.all_node_ids()
        for node_id in execute_outputs:
            execution_list.add_node(node_id)
        self.success = True
        while not execution_list.is_empty():
            node_id, error, ex = await execution_list.stage_node_execution()
            if error is not None:
                self.success = False
                self._report_error(prompt_id, prompt, current_outputs, run.executed, error, ex, client_id)
                break
            result, error, ex = await run.execute(node_id, execution_list)
            if result == FAILURE:
                self.success = False
                self._report_error(prompt_id, prompt, current_outputs, run.executed, error, ex, client_id)
                break
            if result == PENDING:
                execution_list.unstage_node_execution()
            else:
                execution_list.complete_node_execution()
        else:
            self.add_message("execution_success", {"prompt_id": prompt_id}, False, client_id)
        self.history_result = {"outputs": {k: v["output"] for k, v in run.ui_outputs.items()},
                               "meta": {k: v["meta"] for k, v in run.ui_outputs.items()}}

    async def _fingerprint(self, prompt_id, node_id, class_def, inputs, func):
        data, _ = node_calls.input_data(inputs, class_def, node_id)
        return await node_calls.call_over_lists(prompt_id, node_id, class_def, data, func)

    def _report_error(self, prompt_id, prompt, current_outputs, executed, error, ex, client_id):
        node_id = error["node_id"]
        base = {"prompt_id": prompt_id, "node_id": node_id, "node_type": prompt[node_id]["class_type"],
                "executed": list(executed)}
        if isinstance(ex, InterruptProcessingException):
            self.add_message("execution_interrupted", base, True, client_id)
        else:
            self.add_message("execution_error", {
                **base, "exception_message": error["exception_message"], "exception_type": error["exception_type"],
                "traceback": error["traceback"], "current_inputs": error["current_inputs"],
                "current_outputs": list(current_outputs)}, False, client_id)
