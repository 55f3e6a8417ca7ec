"""The live graph of one prompt and the order its nodes run in (API.md §11.3, §11.4).

DynamicPrompt is the submitted graph plus the ephemeral nodes that node expansion adds
(each with the node that created it and the node the UI shows for it); custom nodes get it
through the DYNPROMPT hidden input, so its method names are ComfyUI's.

ExecutionList is the run's to-do list. A node is ready when every source it waits for has
finished and nothing holds it back (an async call still working). The executor takes one
ready node at a time; a taken node may be put back with new sources to wait for (lazy
inputs, expansion). Results travel from a source to each consumer through the consumer's
inbox, so they reach it even when the output cache keeps nothing (--cache-none).
"""
from __future__ import annotations

import asyncio
import inspect

from executor.graph_utils import ExecutionBlocker, is_link  # noqa: F401  (re-exported)
from nodes.registry import NODE_CLASS_MAPPINGS


class DependencyCycleError(Exception):
    pass


class NodeInputError(Exception):
    pass


class NodeNotFoundError(Exception):
    pass


class DynamicPrompt:
    def __init__(self, original_prompt: dict):
        self.original_prompt = original_prompt
        self.ephemeral_prompt: dict = {}
        self.ephemeral_parents: dict = {}
        self.ephemeral_display: dict = {}

    def get_node(self, node_id):
        for graph in (self.ephemeral_prompt, self.original_prompt):
            if node_id in graph:
                return graph[node_id]
        raise NodeNotFoundError(f"Node {node_id} not found")

    def has_node(self, node_id) -> bool:
        return node_id in self.ephemeral_prompt or node_id in self.original_prompt

    def add_ephemeral_node(self, node_id, node_info, parent_id, display_id):
        self.ephemeral_prompt[node_id] = node_info
        self.ephemeral_parents[node_id] = parent_id
        self.ephemeral_display[node_id] = display_id

    def _follow(self, links: dict, node_id):
        while node_id in links:
            node_id = links[node_id]
        return node_id

    def get_real_node_id(self, node_id):
        """The top-level node an ephemeral node descends from (itself for top-level nodes)."""
        return self._follow(self.ephemeral_parents, node_id)

    def get_parent_node_id(self, node_id):
        return self.ephemeral_parents.get(node_id)

    def get_display_node_id(self, node_id):
        return self._follow(self.ephemeral_display, node_id)

    def all_node_ids(self) -> set:
        return set(self.original_prompt) | set(self.ephemeral_prompt)

    def get_original_prompt(self) -> dict:
        return self.original_prompt


def get_input_info(class_def, input_name, valid_inputs=None):
    """(type, category, options) of a declared input, or (None, None, None)."""
    declared = valid_inputs or class_def.INPUT_TYPES()
    for category in ("required", "optional", "hidden"):
        spec = declared.get(category, {}).get(input_name)
        if spec is None:
            continue
        if isinstance(spec, str):  # V1 hidden inputs are plain strings: "PROMPT", "UNIQUE_ID"...
            return spec, category, {}
        return spec[0], category, (spec[1] if len(spec) > 1 else {})
    return None, None, None


def class_of(dynprompt: DynamicPrompt, node_id):
    return NODE_CLASS_MAPPINGS[dynprompt.get_node(node_id)["class_type"]]


def is_output_node(class_def) -> bool:
    return getattr(class_def, "OUTPUT_NODE", False) is True


def is_async_node(class_def) -> bool:
    return inspect.iscoroutinefunction(getattr(class_def, class_def.FUNCTION))


class ExecutionList:
    def __init__(self, dynprompt: DynamicPrompt, output_cache):
        self.dynprompt = dynprompt
        self.output_cache = output_cache
        self.todo: dict = {}         # nodes still to run, in the order they were added
        self.waits_for: dict = {}    # node -> sources it still waits for
        self.feeds: dict = {}        # source -> consumers waiting for it
        self.holds: dict = {}        # node -> async calls still working on it
        self.released = asyncio.Event()
        self.staged_node_id = None
        self.inbox: dict = {}        # consumer -> {source: cache entry or None (not computed yet)}
        self.subscribers: dict = {}  # source -> consumers whose inbox wants its result

    # -- what has to run ---------------------------------------------------------------
    def is_cached(self, node_id) -> bool:
        return self.output_cache.get(node_id) is not None

    def add_node(self, node_id, include_lazy=False, subgraph_nodes=None):
        """Schedule a node and, transitively, the uncached sources of its non-lazy inputs."""
        found, links = [node_id], []
        while found:
            current = found.pop()
            if current in self.todo:
                continue
            self.todo[current] = True
            self.waits_for[current] = set()
            self.feeds[current] = set()
            class_def = class_of(self.dynprompt, current)
            declared = class_def.INPUT_TYPES()
            for name, value in self.dynprompt.get_node(current)["inputs"].items():
                if not is_link(value) or (subgraph_nodes is not None and value[0] not in subgraph_nodes):
                    continue
                options = get_input_info(class_def, name, declared)[2]
                if not include_lazy and options and options.get("lazy"):
                    continue  # asked for later through check_lazy_status
                if not self.is_cached(value[0]):
                    found.append(value[0])
                links.append((value[0], value[1], current))
        for source, socket, consumer in links:
            self.add_strong_link(source, socket, consumer)

    def add_strong_link(self, from_node_id, from_socket, to_node_id):
        """`to_node_id` needs `from_node_id`'s result: wait for it unless it is cached."""
        if not self.is_cached(from_node_id):
            self.add_node(from_node_id)
            self.waits_for[to_node_id].add(from_node_id)
            self.feeds[from_node_id].add(to_node_id)
        self.cache_link(from_node_id, to_node_id)

    def make_input_strong_link(self, to_node_id, to_input):
        """A lazy input was asked for: its source becomes a dependency."""
        inputs = self.dynprompt.get_node(to_node_id)["inputs"]
        if to_input not in inputs:
            raise NodeInputError(f"Node {to_node_id} says it needs input {to_input}, but there is no input to that node at all")
        value = inputs[to_input]
        if not is_link(value):
            raise NodeInputError(f"Node {to_node_id} says it needs input {to_input}, but that value is a constant")
        self.add_strong_link(value[0], value[1], to_node_id)

    def add_external_block(self, node_id):
        """Hold a scheduled node back; the returned callable releases it (async node done)."""
        if node_id not in self.todo:
            raise NodeInputError(f"Node {node_id} is not scheduled")
        self.holds[node_id] = self.holds.get(node_id, 0) + 1

        def release():
            self.holds[node_id] -= 1
            if not self.holds[node_id]:
                del self.holds[node_id]
            self.released.set()
        return release

    # -- handing results to consumers ----------------------------------------------------
    def cache_link(self, from_node_id, to_node_id):
        self.inbox.setdefault(to_node_id, {})[from_node_id] = self.output_cache.get(from_node_id)
        self.subscribers.setdefault(from_node_id, set()).add(to_node_id)

    def get_cache(self, from_node_id, to_node_id):
        entry = self.inbox.get(to_node_id, {}).get(from_node_id)
        if entry is not None:
            self.output_cache.set(from_node_id, entry)  # reading counts as a use (LRU)
        return entry

    def cache_update(self, node_id, value):
        for consumer in self.subscribers.get(node_id, ()):
            if consumer in self.inbox:
                self.inbox[consumer][node_id] = value

    # -- taking nodes in order ---------------------------------------------------------------
    def is_empty(self) -> bool:
        return not self.todo

    def ready_nodes(self) -> list:
        return [n for n in self.todo if not self.waits_for[n] and n not in self.holds]

    async def stage_node_execution(self):
        """(node_id, None, None) to run next; (None, error details, exception) on a cycle;
        (None, None, None) when nothing is left."""
        assert self.staged_node_id is None
        if not self.todo:
            return None, None, None
        ready = self.ready_nodes()
        while not ready and self.holds:  # only async calls left: wait for one to finish
            await self.released.wait()
            self.released.clear()
            ready = self.ready_nodes()
        if not ready:
            ex = DependencyCycleError("Dependency cycle detected")
            return None, {"node_id": self._blame_for_cycle(), "exception_message": str(ex),
                          "exception_type": "graph.DependencyCycleError", "traceback": [],
                          "current_inputs": []}, ex
        self.staged_node_id = self.pick(ready)
        return self.staged_node_id, None, None

    def pick(self, ready: list):
        """An output or async node first (results show early, async work starts early), then a
        node feeding an output directly, then one two links away, else the oldest."""
        def output(node_id):
            return is_output_node(class_of(self.dynprompt, node_id))

        def distance_to_output(node_id, hops):
            if hops == 0:
                return output(node_id)
            return any(distance_to_output(c, hops - 1) for c in self.feeds.get(node_id, ()))

        first_tier = [n for n in ready if output(n) or is_async_node(class_of(self.dynprompt, n))]
        if first_tier:
            return first_tier[0]
        for hops in (1, 2):
            for node_id in ready:
                if distance_to_output(node_id, hops):
                    return node_id
        return ready[0]

    def unstage_node_execution(self):
        assert self.staged_node_id is not None
        self.staged_node_id = None

    def complete_node_execution(self):
        done = self.staged_node_id
        del self.todo[done]
        del self.waits_for[done]
        for consumer in self.feeds.pop(done):
            if consumer in self.waits_for:
                self.waits_for[consumer].discard(done)
        self.inbox.pop(done, None)
        self.subscribers.pop(done, None)
        self.staged_node_id = None

    def nodes_in_cycle(self) -> list:
        """Peel off nodes whose sources are all gone; what stays is stuck on a cycle."""
        stuck = {n: set(self.waits_for[n]) for n in self.todo}
        while True:
            free = [n for n, deps in stuck.items() if not deps]
            if not free:
                return list(stuck)
            for n in free:
                del stuck[n]
            for deps in stuck.values():
                deps.difference_update(free)

    def _blame_for_cycle(self):
        # static cycles fail validation, so prefer a node generated by an expansion (shown as its parent)
        stuck = self.nodes_in_cycle()
        for node_id in stuck:
            display = self.dynprompt.get_display_node_id(node_id)
            if display != node_id:
                return display
        return stuck[0]
