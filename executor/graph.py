"""The live graph of one prompt and the order its nodes run in.

DynamicPrompt is the submitted graph plus the ephemeral nodes that node expansion adds,
with each ephemeral node's parent and display node. ExecutionList is a topological
"dissolve" of the part of the graph the outputs need: a node becomes ready when every
uncached, non-lazy source it depends on is done; a staged node may go back to pending
with new dependencies (lazy inputs, expansion, async nodes).
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
        if node_id in self.ephemeral_prompt:
            return self.ephemeral_prompt[node_id]
        if node_id in self.original_prompt:
            return self.original_prompt[node_id]
        raise NodeNotFoundError(f"Node {node_id} not found")

    def has_node(self, node_id) -> bool:
        return node_id in self.original_prompt or node_id in self.ephemeral_prompt

    def add_ephemeral_node(self, node_id, node_info, parent_id, display_id):
        self.ephemeral_prompt[node_id] = node_info
        self.ephemeral_parents[node_id] = parent_id
        self.ephemeral_display[node_id] = display_id

    def get_real_node_id(self, node_id):
        while node_id in self.ephemeral_parents:
            node_id = self.ephemeral_parents[node_id]
        return node_id

    def get_parent_node_id(self, node_id):
        return self.ephemeral_parents.get(node_id)

    def get_display_node_id(self, node_id):
        while node_id in self.ephemeral_display:
            node_id = self.ephemeral_display[node_id]
        return node_id

    def all_node_ids(self) -> set:
        return set(self.original_prompt) | set(self.ephemeral_prompt)

    def get_original_prompt(self) -> dict:
        return self.original_prompt


def get_input_info(class_def, input_name, valid_inputs=None):
    """(type, category, options) of a declared input, or (None, None, None)."""
    valid_inputs = valid_inputs or class_def.INPUT_TYPES()
    for category in ("required", "optional", "hidden"):
        if input_name in valid_inputs.get(category, {}):
            info = valid_inputs[category][input_name]
            if isinstance(info, str):  # V1 hidden inputs are plain strings
                return info, category, {}
            return info[0], category, (info[1] if len(info) > 1 else {})
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
        self.pending: dict = {}       # insertion-ordered set of nodes still to run
        self.block_count: dict = {}   # how many nodes each node still waits for
        self.blocking: dict = {}      # node -> {node it blocks: {socket: True}}
        self.external_blocks = 0
        self.unblocked = asyncio.Event()
        self.staged_node_id = None
        self.execution_cache: dict = {}
        self.execution_cache_listeners: dict = {}

    # -- building the dependency graph --------------------------------------------
    def is_cached(self, node_id) -> bool:
        return self.output_cache.get(node_id) is not None

    def make_input_strong_link(self, to_node_id, to_input):
        inputs = self.dynprompt.get_node(to_node_id)["inputs"]
        if to_input not in inputs:
            raise NodeInputError(f"Node {to_node_id} says it needs input {to_input}, but there is no input to that node at all")
        value = inputs[to_input]
        if not is_link(value):
            raise NodeInputError(f"Node {to_node_id} says it needs input {to_input}, but that value is a constant")
        self.add_strong_link(value[0], value[1], to_node_id)

    def add_strong_link(self, from_node_id, from_socket, to_node_id):
        if not self.is_cached(from_node_id):
            self.add_node(from_node_id)
            if to_node_id not in self.blocking[from_node_id]:
                self.blocking[from_node_id][to_node_id] = {}
                self.block_count[to_node_id] += 1
            self.blocking[from_node_id][to_node_id][from_socket] = True
        self.cache_link(from_node_id, to_node_id)

    def add_node(self, node_id, include_lazy=False, subgraph_nodes=None):
        stack, links = [node_id], []
        while stack:
            unique_id = stack.pop()
            if unique_id in self.pending:
                continue
            self.pending[unique_id] = True
            self.block_count[unique_id] = 0
            self.blocking[unique_id] = {}
            class_def = class_of(self.dynprompt, unique_id)
            for input_name, value in self.dynprompt.get_node(unique_id)["inputs"].items():
                if not is_link(value):
                    continue
                from_id, from_socket = value
                if subgraph_nodes is not None and from_id not in subgraph_nodes:
                    continue
                _, _, info = get_input_info(class_def, input_name)
                lazy = bool(info and info.get("lazy"))
                if include_lazy or not lazy:
                    if not self.is_cached(from_id):
                        stack.append(from_id)
                    links.append((from_id, from_socket, unique_id))
        for link in links:
            self.add_strong_link(*link)

    def add_external_block(self, node_id):
        """Hold a node back until the returned callback runs (async node still working)."""
        assert node_id in self.block_count
        self.external_blocks += 1
        self.block_count[node_id] += 1

        def unblock():
            self.external_blocks -= 1
            self.block_count[node_id] -= 1
            self.unblocked.set()
        return unblock

    # -- the per-prompt output cache the links read from ---------------------------
    def cache_link(self, from_node_id, to_node_id):
        self.execution_cache.setdefault(to_node_id, {})[from_node_id] = self.output_cache.get(from_node_id)
        self.execution_cache_listeners.setdefault(from_node_id, set()).add(to_node_id)

    def get_cache(self, from_node_id, to_node_id):
        value = self.execution_cache.get(to_node_id, {}).get(from_node_id)
        if value is None:
            return None
        self.output_cache.set(from_node_id, value)  # touching writes back to the main cache
        return value

    def cache_update(self, node_id, value):
        for to_node_id in self.execution_cache_listeners.get(node_id, ()):
            if to_node_id in self.execution_cache:
                self.execution_cache[to_node_id][node_id] = value

    # -- scheduling -------------------------------------------------------------------
    def is_empty(self) -> bool:
        return not self.pending

    def ready_nodes(self) -> list:
        return [n for n in self.pending if self.block_count[n] == 0]

    async def stage_node_execution(self):
        """(node_id, None, None) to run next, or (None, error_details, exception) on a cycle."""
        assert self.staged_node_id is None
        if self.is_empty():
            return None, None, None
        available = self.ready_nodes()
        while not available and self.external_blocks > 0:
            await self.unblocked.wait()
            self.unblocked.clear()
            available = self.ready_nodes()
        if not available:
            cycle = self.nodes_in_cycle()
            blamed = cycle[0]
            for node_id in cycle:  # static cycles fail validation; blame a generated node
                display = self.dynprompt.get_display_node_id(node_id)
                if display != node_id:
                    blamed = display
                    break
            ex = DependencyCycleError("Dependency cycle detected")
            return None, {"node_id": blamed, "exception_message": str(ex),
                          "exception_type": "graph.DependencyCycleError", "traceback": [],
                          "current_inputs": []}, ex
        self.staged_node_id = self.pick(available)
        return self.staged_node_id, None, None

    def pick(self, available: list):
        """Outputs and async nodes first, then what feeds an output, then two links away."""
        def output(node_id):
            return is_output_node(class_of(self.dynprompt, node_id))

        for node_id in available:
            class_def = class_of(self.dynprompt, node_id)
            if is_output_node(class_def) or is_async_node(class_def):
                return node_id
        for node_id in available:
            if any(output(b) for b in self.blocking[node_id]):
                return node_id
        for node_id in available:
            for b in self.blocking[node_id]:
                if any(output(b2) for b2 in self.blocking[b]):
                    return node_id
        return available[0]

    def unstage_node_execution(self):
        assert self.staged_node_id is not None
        self.staged_node_id = None

    def complete_node_execution(self):
        node_id = self.staged_node_id
        del self.pending[node_id]
        for blocked in self.blocking[node_id]:
            self.block_count[blocked] -= 1
        del self.blocking[node_id]
        self.execution_cache.pop(node_id, None)
        self.execution_cache_listeners.pop(node_id, None)
        self.staged_node_id = None

    def nodes_in_cycle(self) -> list:
        blocked_by = {n: {} for n in self.pending}
        for src, targets in self.blocking.items():
            for dst, sockets in targets.items():
                if True in sockets.values():
                    blocked_by[dst][src] = True
        free = [n for n, deps in blocked_by.items() if not deps]
        while free:
            for n in free:
                for deps in blocked_by.values():
                    deps.pop(n, None)
                del blocked_by[n]
            free = [n for n, deps in blocked_by.items() if not deps]
        return list(blocked_by)
