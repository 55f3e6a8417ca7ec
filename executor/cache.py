"""Caching node results and node instances between prompts (API.md §11.5).

A node's output cache key ("signature") is its class, its change fingerprint
(IS_CHANGED / fingerprint_inputs), its id when the class is not idempotent or asks for
UNIQUE_ID, its constant inputs, and for each link the source's position among the
ordered ancestors plus the socket — recursively over all ancestors. Node instances are
cached by (node id, class).

Three policies: classic (keep only what the current graph can use), LRU (keep up to N
results across prompts) and none. Results of expanded (ephemeral) nodes live in
sub-caches keyed by the node that expanded them.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence

from executor.graph import DynamicPrompt
from executor.graph_utils import ExecutionBlocker, is_link
from nodes.registry import NODE_CLASS_MAPPINGS

log = logging.getLogger(__name__)


class Unhashable:
    """Never equal to anything (NaN), so a signature containing it never hits the cache."""

    def __init__(self):
        self.value = float("NaN")


def to_hashable(obj):
    if isinstance(obj, (int, float, str, bool, bytes, type(None))):
        return obj
    if isinstance(obj, Mapping):
        return frozenset((to_hashable(k), to_hashable(v)) for k, v in sorted(obj.items()))
    if isinstance(obj, Sequence):
        return frozenset(zip(itertools.count(), [to_hashable(i) for i in obj]))
    return Unhashable()


def _wants_unique_id(class_def) -> bool:
    kinds = class_def.INPUT_TYPES().get("hidden", {}).values()
    return any(k == "UNIQUE_ID" or (isinstance(k, (tuple, list)) and "UNIQUE_ID" in k) for k in kinds)


class IsChangedCache:
    """IS_CHANGED / fingerprint_inputs results for one prompt, from constant inputs only."""

    def __init__(self, prompt_id, dynprompt: DynamicPrompt, call):
        self.prompt_id = prompt_id
        self.dynprompt = dynprompt
        self.call = call  # async (prompt_id, node_id, class_def, inputs, func_name) -> [results]
        self.values: dict = {}

    async def get(self, node_id):
        if node_id in self.values:
            return self.values[node_id]
        node = self.dynprompt.get_node(node_id)
        class_def = NODE_CLASS_MAPPINGS[node["class_type"]]
        func = getattr(class_def, "IS_CHANGED", None)
        if func is None:
            self.values[node_id] = False
            return False
        if "is_changed" in node:
            self.values[node_id] = node["is_changed"]
            return node["is_changed"]
        try:
            result = await self.call(self.prompt_id, node_id, class_def, node["inputs"], "IS_CHANGED")
            node["is_changed"] = [None if isinstance(x, ExecutionBlocker) else x for x in result]
        except Exception as e:  # a failing fingerprint means "always re-run"
            log.warning("IS_CHANGED of node %s failed: %s", node_id, e)
            node["is_changed"] = float("NaN")
        self.values[node_id] = node["is_changed"]
        return node["is_changed"]


class _KeysById:
    """Instance cache keys: (node id, class)."""

    def __init__(self, dynprompt, is_changed):
        self.dynprompt = dynprompt
        self.keys: dict = {}
        self.subcache_keys: dict = {}

    async def add_keys(self, node_ids):
        for node_id in node_ids:
            if node_id in self.keys or not self.dynprompt.has_node(node_id):
                continue
            key = (node_id, self.dynprompt.get_node(node_id)["class_type"])
            self.keys[node_id] = key
            self.subcache_keys[node_id] = key


class _KeysBySignature(_KeysById):
    """Output cache keys: the input signature over the node and its ordered ancestry."""

    def __init__(self, dynprompt, is_changed):
        super().__init__(dynprompt, is_changed)
        self.is_changed = is_changed

    async def add_keys(self, node_ids):
        for node_id in node_ids:
            if node_id in self.keys or not self.dynprompt.has_node(node_id):
                continue
            self.keys[node_id] = await self.signature(node_id)
            self.subcache_keys[node_id] = (node_id, self.dynprompt.get_node(node_id)["class_type"])

    async def signature(self, node_id):
        ancestors, order = [], {}
        self._ancestry(node_id, ancestors, order)
        parts = [await self._immediate(node_id, order)]
        for a in ancestors:
            parts.append(await self._immediate(a, order))
        return to_hashable(parts)

    async def _immediate(self, node_id, order):
        if not self.dynprompt.has_node(node_id):
            return [float("NaN")]
        node = self.dynprompt.get_node(node_id)
        class_def = NODE_CLASS_MAPPINGS[node["class_type"]]
        sig = [node["class_type"], await self.is_changed.get(node_id)]
        if getattr(class_def, "NOT_IDEMPOTENT", False) or _wants_unique_id(class_def):
            sig.append(node_id)
        for key in sorted(node["inputs"]):
            value = node["inputs"][key]
            if is_link(value):
                sig.append((key, ("ANCESTOR", order[value[0]], value[1])))
            else:
                sig.append((key, value))
        return sig

    def _ancestry(self, node_id, ancestors, order):
        if not self.dynprompt.has_node(node_id):
            return
        inputs = self.dynprompt.get_node(node_id)["inputs"]
        for key in sorted(inputs):
            if is_link(inputs[key]):
                src = inputs[key][0]
                if src not in order:
                    ancestors.append(src)
                    order[src] = len(ancestors) - 1
                    self._ancestry(src, ancestors, order)


class BasicCache:
    def __init__(self, key_class):
        self.key_class = key_class
        self.initialized = False
        self.cache: dict = {}
        self.subcaches: dict = {}

    async def set_prompt(self, dynprompt, node_ids, is_changed):
        self.dynprompt = dynprompt
        self.is_changed = is_changed
        self.keyset = self.key_class(dynprompt, is_changed)
        await self.keyset.add_keys(node_ids)
        self.initialized = True

    def all_node_ids(self) -> set:
        ids = set(self.keyset.keys)
        for sub in self.subcaches.values():
            ids |= sub.all_node_ids()
        return ids

    def clean_unused(self):
        used = set(self.keyset.keys.values())
        self.cache = {k: v for k, v in self.cache.items() if k in used}
        self._clean_subcaches()

    def _clean_subcaches(self):
        used = set(self.keyset.subcache_keys.values())
        self.subcaches = {k: v for k, v in self.subcaches.items() if k in used}

    def _set_immediate(self, node_id, value):
        self.cache[self.keyset.keys.get(node_id)] = value

    def _get_immediate(self, node_id):
        if not self.initialized:
            return None
        return self.cache.get(self.keyset.keys.get(node_id))

    async def _ensure_subcache(self, node_id, children_ids):
        key = self.keyset.subcache_keys.get(node_id)
        sub = self.subcaches.get(key)
        if sub is None:
            sub = BasicCache(self.key_class)
            self.subcaches[key] = sub
        await sub.set_prompt(self.dynprompt, children_ids, self.is_changed)
        return sub

    def _get_subcache(self, node_id):
        return self.subcaches.get(self.keyset.subcache_keys.get(node_id))

    def clear(self):
        self.cache.clear()
        self.subcaches.clear()


class HierarchicalCache(BasicCache):
    """Ephemeral nodes are stored in the sub-cache of the node that created them."""

    def _cache_for(self, node_id):
        chain = []
        parent = self.dynprompt.get_parent_node_id(node_id)
        while parent is not None:
            chain.append(parent)
            parent = self.dynprompt.get_parent_node_id(parent)
        cache = self
        for parent in reversed(chain):
            cache = cache._get_subcache(parent)
            if cache is None:
                return None
        return cache

    def get(self, node_id):
        if not self.initialized:
            return None
        cache = self._cache_for(node_id)
        return None if cache is None else cache._get_immediate(node_id)

    def set(self, node_id, value):
        self._cache_for(node_id)._set_immediate(node_id, value)

    async def ensure_subcache_for(self, node_id, children_ids):
        return await self._cache_for(node_id)._ensure_subcache(node_id, children_ids)


class LRUCache(BasicCache):
    """Keeps up to max_size results across prompts, evicting by the generation last used."""

    def __init__(self, key_class, max_size=100):
        super().__init__(key_class)
        self.max_size = max_size
        self.min_generation = 0
        self.generation = 0
        self.used_generation: dict = {}
        self.children: dict = {}

    async def set_prompt(self, dynprompt, node_ids, is_changed):
        await super().set_prompt(dynprompt, node_ids, is_changed)
        self.generation += 1
        for node_id in node_ids:
            self._mark_used(node_id)

    def clean_unused(self):
        while len(self.cache) > self.max_size and self.min_generation < self.generation:
            self.min_generation += 1
            stale = [k for k in self.cache if self.used_generation[k] < self.min_generation]
            for k in stale:
                del self.cache[k]
                del self.used_generation[k]
                self.children.pop(k, None)
        self._clean_subcaches()

    def get(self, node_id):
        self._mark_used(node_id)
        return self._get_immediate(node_id)

    def set(self, node_id, value):
        self._mark_used(node_id)
        self._set_immediate(node_id, value)

    def _mark_used(self, node_id):
        key = self.keyset.keys.get(node_id)
        if key is not None:
            self.used_generation[key] = self.generation

    async def ensure_subcache_for(self, node_id, children_ids):
        await super()._ensure_subcache(node_id, children_ids)
        await self.keyset.add_keys(children_ids)
        self._mark_used(node_id)
        key = self.keyset.keys.get(node_id)
        self.children[key] = []
        for child in children_ids:
            self._mark_used(child)
            self.children[key].append(self.keyset.keys.get(child))
        return self


class NullCache:
    async def set_prompt(self, dynprompt, node_ids, is_changed):
        pass

    def all_node_ids(self):
        return []

    def clean_unused(self):
        pass

    def get(self, node_id):
        return None

    def set(self, node_id, value):
        pass

    async def ensure_subcache_for(self, node_id, children_ids):
        return self

    def clear(self):
        pass


class CacheSet:
    """The output cache and the node-instance cache, per the --cache-* policy."""

    def __init__(self, mode: str = "classic", lru_size: int = 0):
        if mode == "none":
            self.outputs, self.objects = NullCache(), NullCache()
        elif mode == "lru":
            self.outputs, self.objects = LRUCache(_KeysBySignature, max_size=lru_size), HierarchicalCache(_KeysById)
        else:
            self.outputs, self.objects = HierarchicalCache(_KeysBySignature), HierarchicalCache(_KeysById)
        self.all = [self.outputs, self.objects]
