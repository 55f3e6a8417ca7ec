"""Running one prompt (API.md §10.5, §11.3–§11.12).

PromptExecutor keeps the caches between prompts; a _Run holds one prompt's state. The main
loop takes the next ready node from the ExecutionList and hands it to _Run.step, which
answers "done", "failed" or "not yet" (the node waits for lazy inputs, generated nodes or
async calls and is taken again later). Everything the client sees goes through the sink.
"""
from __future__ import annotations

import asyncio
import logging
import sys
import time
import traceback
from typing import NamedTuple

import torch

from executor import node_calls
from executor.cache import CacheSet, Fingerprints
from executor.graph import DynamicPrompt, ExecutionList, is_output_node
from executor.graph_utils import ExecutionBlocker, GraphBuilder, is_link
from executor.progress import ProgressReporter
from executor.validation import full_type_name
from models import progress as model_progress
from models.progress import InterruptProcessingException
from nodes.registry import NODE_CLASS_MAPPINGS

log = logging.getLogger(__name__)

DONE, FAILED, NOT_YET = "done", "failed", "not yet"
OOM_TIP = ("This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before you might "
           "have accidentally set the batch_size to a large number.")


class CacheEntry(NamedTuple):
    ui: dict | None   # {"meta": {...}, "output": ui dict} of a node that showed something
    outputs: list     # per output socket, the list of values


def format_value(x):
    """How an input shows in execution_error.current_inputs."""
    if x is None or isinstance(x, (int, float, bool, str)):
        return x
    return str(x)


class _Run:
    """One prompt's execution state."""

    def __init__(self, executor, prompt_id, dynprompt, extra_data, client_id):
        self.executor = executor
        self.sink = executor.sink
        self.caches = executor.caches
        self.prompt_id = prompt_id
        self.dynprompt = dynprompt
        self.extra_data = extra_data
        self.client_id = client_id
        self.executed: set = set()          # nodes that finished OK in this run
        self.expansions: dict = {}          # node -> [(generated?, result)] per call, until resolved
        self.async_calls: dict = {}         # node -> per-call results (tasks still running)
        self.ui_outputs: dict = {}          # node -> {"meta", "output"}
        self.progress = ProgressReporter(self.sink, prompt_id, dynprompt, client_id)

    def to_client(self, event, data):
        """Events only the submitting client sees; dropped when the prompt has none."""
        if self.client_id is not None:
            self.sink.send(event, data, self.client_id)

    def _ids(self, node_id):
        dp = self.dynprompt
        return dp.get_real_node_id(node_id), dp.get_display_node_id(node_id), dp.get_parent_node_id(node_id)

    async def step(self, node_id, todo: ExecutionList):
        """(DONE | FAILED | NOT_YET, error details, exception)."""
        node = self.dynprompt.get_node(node_id)
        class_def = NODE_CLASS_MAPPINGS[node["class_type"]]
        cached = self.caches.outputs.get(node_id)
        if cached is not None:
            self._replay(node_id, cached, todo)
            return DONE, None, None
        values = None
        try:
            if node_id in self.async_calls:
                outputs, ui, expanded = self._collect_async(node_id, class_def)
            elif node_id in self.expansions:
                outputs, ui, expanded = self._collect_expansion(node_id, class_def, todo), {}, False
            else:
                self.progress.start(node_id)
                values, missing = node_calls.input_data(node["inputs"], class_def, node_id, todo,
                                                        self.dynprompt, self.extra_data)
                finished = await self._call(node_id, node["class_type"], class_def, values, missing, todo)
                if finished is None:
                    return NOT_YET, None, None
                outputs, ui, expanded = finished
            if ui:
                self._show(node_id, ui)
            if expanded:
                await self._expand(node_id, outputs, todo)
                return NOT_YET, None, None
            entry = CacheEntry(self.ui_outputs.get(node_id), outputs)
            todo.cache_update(node_id, entry)
            self.caches.outputs.set(node_id, entry)
        except InterruptProcessingException as ex:
            log.info("Processing interrupted")
            return FAILED, {"node_id": self._ids(node_id)[0]}, ex
        except Exception as ex:
            return FAILED, self._failure(node_id, ex, values), ex
        self.progress.finish(node_id)
        self.executed.add(node_id)
        return DONE, None, None

    def _replay(self, node_id, cached: CacheEntry, todo):
        """A cached node the scheduler reached (an output node): show its stored UI again."""
        self.to_client("executed", {"node": node_id, "display_node": self._ids(node_id)[1],
                                    "output": (cached.ui or {}).get("output"), "prompt_id": self.prompt_id})
        if cached.ui is not None:
            self.ui_outputs[node_id] = cached.ui
        self.progress.finish(node_id)
        todo.cache_update(node_id, cached)

    async def _call(self, node_id, class_type, class_def, values, missing, todo):
        """Run the node's function; None when it has to wait (lazy inputs, async calls)."""
        display_id = self._ids(node_id)[1]
        self.to_client("executing", {"node": node_id, "display_node": display_id, "prompt_id": self.prompt_id})
        self.executor.current_node = display_id
        instance = self.caches.objects.get(node_id)
        if instance is None:
            instance = class_def()
            self.caches.objects.set(node_id, instance)
        if getattr(instance, "check_lazy_status", None) is not None:
            asked = await node_calls.resolve(await node_calls.map_over_lists(
                self.prompt_id, node_id, instance, values, "check_lazy_status",
                before_call=model_progress.check_interrupted))
            names = {name for answer in asked if isinstance(answer, list) for name in answer}
            wanted = [n for n in names if isinstance(n, str) and (n not in values or n in missing)]
            if wanted:
                for name in wanted:
                    todo.make_input_strong_link(node_id, name)
                return None
        returns = await node_calls.map_over_lists(
            self.prompt_id, node_id, instance, values, instance.FUNCTION,
            before_call=model_progress.check_interrupted,
            on_blocked=lambda blocker: self._blocked(node_id, class_type, blocker),
            pre_call=lambda index: GraphBuilder.set_default_prefix(node_id, index, 0))
        tasks = [r for r in returns if isinstance(r, asyncio.Task)]
        if any(not t.done() for t in tasks):
            self._wait_for_async(node_id, returns, tasks, todo)
            return None
        return node_calls.split_returns(returns, class_def)

    def _wait_for_async(self, node_id, returns, tasks, todo):
        """Leave the node's async calls running; it is taken again once all have finished."""
        self.async_calls[node_id] = returns
        release = todo.add_external_block(node_id)

        async def release_when_done():
            await asyncio.gather(*tasks, return_exceptions=True)
            release()
        asyncio.create_task(release_when_done())

    def _collect_async(self, node_id, class_def):
        results = []
        for r in self.async_calls.pop(node_id):
            results.append(r.result() if isinstance(r, asyncio.Task) else r)  # a failed call raises here
        return node_calls.split_returns(results, class_def)

    def _blocked(self, node_id, class_type, blocker: ExecutionBlocker):
        """The first consumer of a blocker with a message reports it; the rest pass it on silently."""
        if blocker.message is None:
            return blocker
        self.sink.send("execution_error", {
            "prompt_id": self.prompt_id, "node_id": node_id, "node_type": class_type,
            "executed": list(self.executed), "exception_message": f"Execution Blocked: {blocker.message}",
            "exception_type": "ExecutionBlocked", "traceback": [], "current_inputs": [],
            "current_outputs": []}, self.client_id)
        return ExecutionBlocker(None)

    def _show(self, node_id, ui: dict):
        real_id, display_id, parent_id = self._ids(node_id)
        self.ui_outputs[node_id] = {"meta": {"node_id": node_id, "display_node": display_id,
                                             "parent_node": parent_id, "real_node_id": real_id},
                                    "output": ui}
        self.to_client("executed", {"node": node_id, "display_node": display_id, "output": ui,
                                    "prompt_id": self.prompt_id})

    async def _expand(self, node_id, per_call, todo: ExecutionList):
        """Add the generated nodes to the graph; the node waits for the ones its results link to."""
        generated, new_outputs, links, pending = [], [], [], []
        for graph, result in per_call:
            if graph is None:
                pending.append((False, result))
                continue
            for new_id, info in graph.items():
                generated.append(new_id)
                self.dynprompt.add_ephemeral_node(new_id, info, node_id, info.get("override_display_id", node_id))
                if is_output_node(NODE_CLASS_MAPPINGS[info["class_type"]]):
                    new_outputs.append(new_id)
            links += [value for value in result if is_link(value)]
            pending.append((True, result))
        for cache in self.caches.all:
            await cache.open_expansion(node_id, set(generated))
        for out in new_outputs:
            todo.add_node(out)
            todo.cache_link(out, node_id)
        for source, socket in links:
            todo.add_strong_link(source, socket, node_id)
        self.expansions[node_id] = pending

    def _collect_expansion(self, node_id, class_def, todo: ExecutionList):
        """The expanding node's results, links to generated nodes replaced by their values."""
        per_call = []
        for generated, result in self.expansions.pop(node_id):
            if not generated:
                per_call.append(result)
                continue
            values = []
            for value in result:
                if is_link(value):
                    values.extend(todo.get_cache(value[0], node_id).outputs[value[1]])
                else:
                    values.append(value)
            per_call.append(tuple(values))
        return node_calls.merge_results(per_call, class_def)

    def _failure(self, node_id, ex, values):
        typ, _, tb = sys.exc_info()
        log.error("!!! Exception during processing !!! %s\n%s", ex, traceback.format_exc())
        tips = ""
        if isinstance(ex, torch.OutOfMemoryError):
            tips = OOM_TIP
            log.error("Got an OOM, unloading all loaded models.")
            self.executor.on_out_of_memory()
        shown = {} if values is None else {k: [format_value(x) for x in v] for k, v in values.items()}
        return {"node_id": self._ids(node_id)[0], "exception_message": f"{ex}\n{tips}",
                "exception_type": full_type_name(typ), "traceback": traceback.format_tb(tb),
                "current_inputs": shown}


class PromptExecutor:
    """Executes prompts one at a time, keeping caches between them."""

    def __init__(self, sink, cache_mode: str = "classic", lru_size: int = 0, on_out_of_memory=None,
                 ram_headroom: float = 0.0):
        self.sink = sink
        self.cache_mode, self.lru_size, self.ram_headroom = cache_mode, lru_size, ram_headroom
        self.on_out_of_memory = on_out_of_memory or (lambda: None)
        self.current_node = None
        self.reset()

    def member_executor(self) -> "PromptExecutor":
        """An executor for one prompt of a --batch-prompts group: its own run state, caches that
        share this executor's stored results."""
        member = PromptExecutor(self.sink, self.cache_mode, self.lru_size, self.on_out_of_memory, self.ram_headroom)
        member.caches = self.caches.shared_view()
        return member

    def reset(self):
        """Forget every cached result and node instance (POST /free with free_memory)."""
        self.caches = CacheSet(self.cache_mode, self.lru_size, self.ram_headroom)
        self.status_messages: list = []
        self.success = True
        self.history_result: dict = {"outputs": {}, "meta": {}}

    def add_message(self, event, data, broadcast: bool, client_id):
        """A status message: kept for the history entry and sent to the client (or everyone)."""
        data = {**data, "timestamp": int(time.time() * 1000)}
        self.status_messages.append((event, data))
        if client_id is not None or broadcast:
            self.sink.send(event, data, client_id)

    def execute(self, prompt, prompt_id, extra_data=None, execute_outputs=()):
        """Run a validated prompt to the end in this thread, on an event loop of its own."""
        asyncio.run(self.execute_async(prompt, prompt_id, extra_data or {}, list(execute_outputs)))

    async def execute_async(self, prompt, prompt_id, extra_data, execute_outputs):
        from models.sampling import preview
        preview.set_prompt_override(extra_data.get("preview_method"))
        model_progress.request_interrupt(False)  # an interrupt sent while idle does nothing
        client_id = extra_data.get("client_id")
        self.status_messages = []
        self.add_message("execution_start", {"prompt_id": prompt_id}, False, client_id)
        run = _Run(self, prompt_id, DynamicPrompt(prompt), extra_data, client_id)
        model_progress.set_progress_hook(run.progress.update)
        try:
            with torch.inference_mode():
                await self._run(run, prompt, execute_outputs)
        finally:
            model_progress.set_progress_hook(None)
            self.current_node = None
            preview.set_prompt_override(None)

    async def _run(self, run: _Run, prompt, execute_outputs):
        fingerprints = Fingerprints(run.prompt_id, run.dynprompt, self._fingerprint)
        for cache in self.caches.all:
            await cache.set_prompt(run.dynprompt, prompt.keys(), fingerprints)
            cache.clean_unused()
        cached = [n for n in prompt if self.caches.outputs.get(n) is not None]
        self.add_message("execution_cached", {"nodes": cached, "prompt_id": run.prompt_id}, False, run.client_id)
        todo = ExecutionList(run.dynprompt, self.caches.outputs)
        known_outputs = self.caches.outputs.all_node_ids()
        for node_id in execute_outputs:
            todo.add_node(node_id)
        # success follows the last node run; ComfyUI 0.8.0 leaves it untouched when an expansion
        # creates a cycle, so such a job is reported as an execution_error with status "success".
        self.success = True
        while not todo.is_empty():
            node_id, error, ex = await todo.stage_node_execution()
            if error is not None:
                self._report(run, prompt, known_outputs, error, ex)
                break
            outcome, error, ex = await run.step(node_id, todo)
            self.success = outcome != FAILED
            if outcome == FAILED:
                self._report(run, prompt, known_outputs, error, ex)
                break
            if outcome == NOT_YET:
                todo.unstage_node_execution()
            else:
                todo.complete_node_execution()
            self.caches.outputs.poll(ram_headroom=self.caches.ram_headroom)
        else:
            self.add_message("execution_success", {"prompt_id": run.prompt_id}, False, run.client_id)
        self.history_result = {"outputs": {k: v["output"] for k, v in run.ui_outputs.items()},
                               "meta": {k: v["meta"] for k, v in run.ui_outputs.items()}}

    async def _fingerprint(self, prompt_id, node_id, class_def, inputs, func):
        values, _ = node_calls.input_data(inputs, class_def, node_id)  # constants only
        return await node_calls.call_over_lists(prompt_id, node_id, class_def, values, func)

    def _report(self, run: _Run, prompt, known_outputs, error, ex):
        node_id = error["node_id"]
        data = {"prompt_id": run.prompt_id, "node_id": node_id, "node_type": prompt[node_id]["class_type"],
                "executed": list(run.executed)}
        if isinstance(ex, InterruptProcessingException):
            self.add_message("execution_interrupted", data, True, run.client_id)
            return
        data.update(exception_message=error["exception_message"], exception_type=error["exception_type"],
                    traceback=error["traceback"], current_inputs=error["current_inputs"],
                    current_outputs=list(known_outputs))
        self.add_message("execution_error", data, False, run.client_id)
