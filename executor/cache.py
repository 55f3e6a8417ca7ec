"""Keeping node results and node instances between prompts (API.md §11.5).

Results are stored under a node's *signature*: its class, its change fingerprint
(IS_CHANGED / fingerprint_inputs), its id when the class is not idempotent or asks for
UNIQUE_ID, its constant inputs, and for each link the source's position among the node's
ordered ancestors plus the socket — for the node and every ancestor. Equal signatures mean
the same computation, so the stored result can be reused. Node instances are stored under
(node id, class).

Policies: classic (after each new prompt keep only what that prompt can use), LRU (keep up
to N results across prompts, dropping the least recently used prompt generations first),
RAM pressure (drop large, old results while free RAM is below a threshold) and none.
Results of nodes an expansion generated live in a child level of the expanding node.
"""
from __future__ import annotations

import gc
import logging
import time
from collections.abc import Mapping, Sequence

import psutil
import torch

from executor.graph import DynamicPrompt
from executor.graph_utils import ExecutionBlocker, is_link
from nodes.registry import NODE_CLASS_MAPPINGS

log = logging.getLogger(__name__)


class _Opaque:
    """Stands in for a value that cannot be compared (a tensor, an object): equal only to itself,
    so a signature containing one never matches a later prompt's."""
    __slots__ = ()


def freeze(value):
    """A hashable, comparable form of a JSON-like value."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, Mapping):
        return ("map", tuple(sorted((freeze(k), freeze(v)) for k, v in value.items())))
    if isinstance(value, Sequence):
        return ("seq", tuple(freeze(v) for v in value))
    return _Opaque()


def _asks_for_unique_id(class_def) -> bool:
    for kind in class_def.INPUT_TYPES().get("hidden", {}).values():
        if kind == "UNIQUE_ID" or (isinstance(kind, (tuple, list)) and "UNIQUE_ID" in kind):
            return True
    return False


class Fingerprints:
    """IS_CHANGED results of one prompt, each computed once from the node's constant inputs
    (linked inputs arrive as None). A failing IS_CHANGED counts as NaN: never equal, so re-run."""

    def __init__(self, prompt_id, dynprompt: DynamicPrompt, call):
        self.prompt_id = prompt_id
        self.dynprompt = dynprompt
        self.call = call  # async (prompt_id, node_id, class_def, inputs, func_name) -> [results]
        self.known: dict = {}

    async def get(self, node_id):
        if node_id not in self.known:
            self.known[node_id] = await self._compute(node_id)
        return self.known[node_id]

    async def _compute(self, node_id):
        node = self.dynprompt.get_node(node_id)
        class_def = NODE_CLASS_MAPPINGS[node["class_type"]]
        if getattr(class_def, "IS_CHANGED", None) is None:
            return False
        if "is_changed" not in node:  # remembered on the node so every cache level agrees
            try:
                values = await self.call(self.prompt_id, node_id, class_def, node["inputs"], "IS_CHANGED")
                node["is_changed"] = [None if isinstance(v, ExecutionBlocker) else v for v in values]
            except Exception as e:
                log.warning("IS_CHANGED of node %s (%s) failed: %s", node_id, node["class_type"], e)
                node["is_changed"] = float("nan")
        return node["is_changed"]


def _ancestors(dynprompt: DynamicPrompt, node_id) -> dict:
    """{ancestor id: position}, in depth-first order over inputs sorted by name."""
    order: dict = {}

    def visit(current):
        if not dynprompt.has_node(current):
            return
        inputs = dynprompt.get_node(current)["inputs"]
        for name in sorted(inputs):
            if is_link(inputs[name]) and inputs[name][0] not in order:
                order[inputs[name][0]] = len(order)
                visit(inputs[name][0])
    visit(node_id)
    return order


async def signature_key(dynprompt: DynamicPrompt, fingerprints: Fingerprints, node_id):
    order = _ancestors(dynprompt, node_id)

    async def own_part(current):
        if not dynprompt.has_node(current):
            return (float("nan"),)  # a source that does not exist: never reusable
        node = dynprompt.get_node(current)
        class_def = NODE_CLASS_MAPPINGS[node["class_type"]]
        part = [node["class_type"], await fingerprints.get(current)]
        if getattr(class_def, "NOT_IDEMPOTENT", False) or _asks_for_unique_id(class_def):
            part.append(current)
        for name in sorted(node["inputs"]):
            value = node["inputs"][name]
            part.append((name, ("ANCESTOR", order[value[0]], value[1]) if is_link(value) else value))
        return part

    return freeze([await own_part(node_id)] + [await own_part(a) for a in order])


async def id_key(dynprompt: DynamicPrompt, fingerprints, node_id):
    return node_id, dynprompt.get_node(node_id)["class_type"]


class _Level:
    """The keys of one graph level (the prompt, or the nodes one expansion generated),
    the values stored under them and the levels below."""

    def __init__(self):
        self.keys: dict = {}      # node id -> data key
        self.values: dict = {}    # data key -> stored value
        self.child_of: dict = {}  # node id -> key of the level holding what it generated
        self.children: dict = {}  # that key -> _Level

    def node_ids(self) -> set:
        ids = set(self.keys)
        for child in self.children.values():
            ids |= child.node_ids()
        return ids

    def drop_unused(self):
        used, used_children = set(self.keys.values()), set(self.child_of.values())
        self.values = {k: v for k, v in self.values.items() if k in used}
        self.children = {k: v for k, v in self.children.items() if k in used_children}


class ClassicCache:
    """Values per level; a new prompt keeps only the values its own keys name."""

    def __init__(self, make_key):
        self.make_key = make_key
        self.root = _Level()
        self.dynprompt = None
        self.fingerprints = None

    async def set_prompt(self, dynprompt, node_ids, fingerprints):
        self.dynprompt, self.fingerprints = dynprompt, fingerprints
        await self._key_level(self.root, node_ids)

    async def _key_level(self, level: _Level, node_ids, reset: bool = True):
        if reset:
            level.keys, level.child_of = {}, {}
        for node_id in node_ids:
            if node_id in level.keys or not self.dynprompt.has_node(node_id):
                continue
            level.keys[node_id] = await self.make_key(self.dynprompt, self.fingerprints, node_id)
            level.child_of[node_id] = (node_id, self.dynprompt.get_node(node_id)["class_type"])

    def clean_unused(self):
        self.root.drop_unused()

    def all_node_ids(self) -> set:
        return self.root.node_ids()

    def _level_of(self, node_id):
        """The level an (ephemeral) node belongs to: follow its parents down from the root."""
        if self.dynprompt is None:
            return None
        chain = []
        parent = self.dynprompt.get_parent_node_id(node_id)
        while parent is not None:
            chain.append(parent)
            parent = self.dynprompt.get_parent_node_id(parent)
        level = self.root
        for parent in reversed(chain):
            level = level.children.get(level.child_of.get(parent))
            if level is None:
                return None
        return level

    def get(self, node_id):
        level = self._level_of(node_id)
        if level is None or node_id not in level.keys:
            return None
        return level.values.get(level.keys[node_id])

    def set(self, node_id, value):
        level = self._level_of(node_id)
        if level is not None and node_id in level.keys:
            level.values[level.keys[node_id]] = value

    async def open_expansion(self, node_id, child_ids):
        """Key the nodes `node_id` just generated in its child level; drop that level's stale values."""
        level = self._level_of(node_id)
        key = level.child_of.get(node_id)
        child = level.children.setdefault(key, _Level())
        await self._key_level(child, child_ids)
        child.drop_unused()

    def poll(self, ram_headroom=0.0):
        pass

    def clear(self):
        self.root = _Level()

    def shared_view(self) -> "ClassicCache":
        """The cache of one prompt of a --batch-prompts group: keys of its own, this cache's
        stored values (so the members share loaded models), nothing dropped until adopt()."""
        view = _SharedClassicView(self.make_key)
        view.root.values = self.root.values
        return view

    def adopt(self, view: "ClassicCache") -> None:
        """After a group: keep what its last prompt used, as if that prompt had run alone."""
        self.root.keys, self.root.child_of = dict(view.root.keys), dict(view.root.child_of)
        self.clean_unused()


class _SharedClassicView(ClassicCache):
    def clean_unused(self):
        pass  # the other members' values are in the same store


class LRUCache(ClassicCache):
    """One flat store across prompts. Each prompt is a generation; every key a prompt uses is
    stamped with it; when the store is over `max_size`, whole old generations go."""

    def __init__(self, make_key, max_size: int = 100):
        super().__init__(make_key)
        self.max_size = max_size
        self.generation = 0
        self.oldest_kept = 0
        self.stamp: dict = {}  # data key -> generation it was last used in

    async def set_prompt(self, dynprompt, node_ids, fingerprints):
        await super().set_prompt(dynprompt, node_ids, fingerprints)
        self.generation += 1
        for node_id in node_ids:
            self._touch(node_id)

    def _touch(self, node_id):
        key = self.root.keys.get(node_id)
        if key is not None:
            self.stamp[key] = self.generation

    def clean_unused(self):
        values = self.root.values
        while len(values) > self.max_size and self.oldest_kept < self.generation:
            self.oldest_kept += 1
            for key in [k for k in values if self.stamp[k] < self.oldest_kept]:
                del values[key]
                del self.stamp[key]
        self._drop_unused_levels()

    def _drop_unused_levels(self):
        used = set(self.root.child_of.values())
        self.root.children = {k: v for k, v in self.root.children.items() if k in used}

    def get(self, node_id):
        self._touch(node_id)
        key = self.root.keys.get(node_id)
        return None if key is None else self.root.values.get(key)

    def set(self, node_id, value):
        self._touch(node_id)
        key = self.root.keys.get(node_id)
        if key is not None:
            self.root.values[key] = value

    async def open_expansion(self, node_id, child_ids):
        # generated nodes are keyed in the flat store; the child level only records who they are
        child = self.root.children.setdefault(self.root.child_of.get(node_id), _Level())
        await self._key_level(child, child_ids)
        await self._key_level(self.root, child_ids, reset=False)
        self._touch(node_id)
        for child_id in child_ids:
            self._touch(child_id)
        self.clean_unused()


# RAM pressure: a cached value's cost is a nominal 0.1 plus half the bytes of its CPU tensors,
# scaled up by 1.3 per prompt generation since it was last used; the costliest go first until
# free RAM is 10% above the threshold.
BASE_COST, TENSOR_COST_FACTOR, AGE_FACTOR, HYSTERESIS = 0.1, 0.5, 1.3, 1.1


def _free_ram_gb() -> float:
    return psutil.virtual_memory().available / (1024 ** 3)


def _ram_cost(outputs) -> float:
    cost = BASE_COST

    def walk(items):
        nonlocal cost
        for item in items or ():
            if isinstance(item, list):
                walk(item)
            elif isinstance(item, torch.Tensor) and item.device.type == "cpu":
                cost += item.numel() * item.element_size() * TENSOR_COST_FACTOR
            elif hasattr(item, "get_ram_usage"):
                cost += item.get_ram_usage()
    walk(outputs)
    return cost


class RAMPressureCache(LRUCache):
    def __init__(self, make_key):
        super().__init__(make_key, max_size=0)
        self.last_touch: dict = {}

    def clean_unused(self):
        self._drop_unused_levels()  # never evicts by count

    def get(self, node_id):
        self.last_touch[self.root.keys.get(node_id)] = time.time()
        return super().get(node_id)

    def set(self, node_id, value):
        self.last_touch[self.root.keys.get(node_id)] = time.time()
        super().set(node_id, value)

    def poll(self, ram_headroom=0.0):
        if _free_ram_gb() > ram_headroom:
            return
        gc.collect()
        if _free_ram_gb() > ram_headroom:
            return
        ranked = sorted(((AGE_FACTOR ** (self.generation - self.stamp[key]) * _ram_cost(entry.outputs),
                          self.last_touch.get(key, 0.0), i, key)
                         for i, (key, entry) in enumerate(self.root.values.items())))
        while ranked and _free_ram_gb() < ram_headroom * HYSTERESIS:
            key = ranked.pop()[-1]
            del self.root.values[key]
            gc.collect()


class NullCache:
    """--cache-none: nothing is kept."""

    async def set_prompt(self, dynprompt, node_ids, fingerprints):
        pass

    def all_node_ids(self):
        return []

    def clean_unused(self):
        pass

    def get(self, node_id):
        return None

    def set(self, node_id, value):
        pass

    async def open_expansion(self, node_id, child_ids):
        pass

    def poll(self, ram_headroom=0.0):
        pass

    def clear(self):
        pass

    def shared_view(self):
        return self

    def adopt(self, view):
        pass


class CacheSet:
    """The output cache and the node-instance cache, per the --cache-* policy."""

    def __init__(self, mode: str = "classic", lru_size: int = 0, ram_headroom: float = 0.0):
        self.ram_headroom = ram_headroom
        if mode == "none":
            self.outputs, self.objects = NullCache(), NullCache()
        else:
            self.objects = ClassicCache(id_key)
            if mode == "lru":
                self.outputs = LRUCache(signature_key, max_size=lru_size)
            elif mode == "ram":
                self.outputs = RAMPressureCache(signature_key)
            else:
                self.outputs = ClassicCache(signature_key)
        self.all = [self.outputs, self.objects]

    def shares_across_prompts(self) -> bool:
        """Whether prompts run together can share stored results (the classic cache; LRU/RAM keep
        per-key stamps, and with no cache every prompt would load its own copy of each model)."""
        return all(type(c) is ClassicCache for c in self.all)

    def shared_view(self) -> "CacheSet":
        view = CacheSet.__new__(CacheSet)
        view.ram_headroom = self.ram_headroom
        view.outputs, view.objects = self.outputs.shared_view(), self.objects.shared_view()
        view.all = [view.outputs, view.objects]
        return view

    def adopt(self, view: "CacheSet") -> None:
        self.outputs.adopt(view.outputs)
        self.objects.adopt(view.objects)
