"""Unit tests of the executor's parts: scheduling order and cycles, cache keys and policies,
the order of progress/preview events, GraphBuilder ids (API.md §11.4, §11.5, §10.6)."""
import asyncio

import pytest
from PIL import Image

from executor.cache import ClassicCache, Fingerprints, LRUCache, RAMPressureCache, freeze, signature_key
from executor.events import RecordingSink
from executor.graph import DynamicPrompt, ExecutionList
from executor.graph_utils import GraphBuilder, is_link
from executor.progress import PREVIEW, ProgressReporter


def graph(**nodes):
    return {k: {"class_type": v[0], "inputs": v[1]} for k, v in nodes.items()}


async def no_fingerprint(prompt_id, node_id, class_def, inputs, func):
    raise AssertionError("no test node here has IS_CHANGED")


def test_is_link_rules():
    assert is_link(["1", 0]) and is_link(["1", 0.0]) and is_link(["1", True])
    assert not is_link([1, 0]) and not is_link(["1", "0"]) and not is_link(["1", 0, 2]) and not is_link(("1", 0))


def test_graph_builder_ids_follow_the_expanding_node():
    GraphBuilder.set_default_prefix("7", 2)
    first, second = GraphBuilder(), GraphBuilder()
    a = first.node("X", value=1)
    b = first.node("Y", a=a.out(0))
    assert (a.id, b.id) == ("7.2.0.1", "7.2.0.2") and second.prefix == "7.2.1."
    b.set_override_display_id("7")
    first.replace_node_output("1", 0, 5)
    assert first.finalize()["7.2.0.2"] == {"class_type": "Y", "inputs": {"a": 5}, "override_display_id": "7"}


async def test_scheduler_prefers_outputs_then_their_feeders(test_nodes):
    g = graph(**{"1": ("T_IntConst", {"value": 1}), "2": ("T_IntConst", {"value": 2}),
                 "3": ("T_Add", {"a": ["1", 0], "b": ["2", 0]}), "4": ("T_ShowInt", {"value": ["3", 0]}),
                 "5": ("T_ShowInt", {"value": ["2", 0]})})
    todo = ExecutionList(DynamicPrompt(g), ClassicCache(signature_key))
    todo.add_node("4")
    todo.add_node("5")
    order = []
    while not todo.is_empty():
        node_id, error, _ = await todo.stage_node_execution()
        assert error is None
        order.append(node_id)
        todo.complete_node_execution()
    # "2" feeds the output "5" directly, so it goes before "1"; outputs run as soon as ready
    assert order == ["2", "5", "1", "3", "4"]


async def test_scheduler_reports_cycles_blaming_generated_nodes(test_nodes):
    dp = DynamicPrompt(graph(**{"1": ("T_IntConst", {"value": 1}), "2": ("T_ShowInt", {"value": ["1", 0]})}))
    dp.add_ephemeral_node("1.0.0.a", {"class_type": "T_Add", "inputs": {"a": ["1.0.0.a", 0], "b": 1}}, "1", "1")
    todo = ExecutionList(dp, ClassicCache(signature_key))
    todo.add_node("1.0.0.a")
    node_id, error, ex = await todo.stage_node_execution()
    assert node_id is None and error["node_id"] == "1" and type(ex).__name__ == "DependencyCycleError"
    assert error["exception_type"] == "graph.DependencyCycleError"


async def test_signatures_follow_ancestry_not_ids(test_nodes):
    a = graph(**{"1": ("T_IntConst", {"value": 1}), "2": ("T_Add", {"a": ["1", 0], "b": 2})})
    b = graph(**{"x": ("T_IntConst", {"value": 1}), "y": ("T_Add", {"a": ["x", 0], "b": 2})})
    c = graph(**{"1": ("T_IntConst", {"value": 5}), "2": ("T_Add", {"a": ["1", 0], "b": 2})})

    async def key(g, node_id):
        dp = DynamicPrompt(g)
        return await signature_key(dp, Fingerprints("p", dp, no_fingerprint), node_id)
    assert await key(a, "2") == await key(b, "y")
    assert await key(a, "2") != await key(c, "2")  # an upstream constant changed
    assert await key(a, "1") != await key(c, "1")


def test_freeze_never_matches_opaque_values():
    assert freeze({"b": [1, 2], "a": None}) == freeze({"a": None, "b": (1, 2)})
    assert freeze([object()]) != freeze([object()])


async def test_fingerprint_failures_count_as_changed(test_nodes):
    dp = DynamicPrompt(graph(**{"1": ("T_Changing", {"value": 1})}))

    async def failing(*args):
        raise RuntimeError("boom")
    value = await Fingerprints("p", dp, failing).get("1")
    assert value != value  # NaN
    assert dp.get_node("1")["is_changed"] is value


async def _cache_with(cache, g):
    dp = DynamicPrompt(g)
    await cache.set_prompt(dp, g.keys(), Fingerprints("p", dp, no_fingerprint))
    cache.clean_unused()
    return dp


async def test_classic_and_lru_eviction(test_nodes):
    one = graph(**{"1": ("T_IntConst", {"value": 1})})
    two = graph(**{"1": ("T_IntConst", {"value": 2})})
    classic, lru = ClassicCache(signature_key), LRUCache(signature_key, max_size=1)
    for cache in (classic, lru):
        await _cache_with(cache, one)
        cache.set("1", "first")
        await _cache_with(cache, two)
        cache.set("1", "second")
        await _cache_with(cache, one)
    assert classic.get("1") is None          # only the current graph's results survive
    assert lru.get("1") == "first"           # still within max_size... until a third result arrives
    three = graph(**{"1": ("T_IntConst", {"value": 3})})
    await _cache_with(lru, three)
    lru.set("1", "third")
    await _cache_with(lru, two)
    assert lru.get("1") is None              # the older generations went


async def test_ram_pressure_cache_evicts_biggest_when_memory_is_low(test_nodes, monkeypatch):
    import torch
    from executor import cache as cache_mod
    from executor.runner import CacheEntry
    cache = RAMPressureCache(signature_key)
    g = graph(**{"1": ("T_IntConst", {"value": 1}), "2": ("T_IntConst", {"value": 2})})
    await _cache_with(cache, g)
    cache.set("1", CacheEntry(None, [[torch.zeros(1000)]]))
    cache.set("2", CacheEntry(None, [[1]]))
    free = iter([1.0, 1.0, 1.0, 100.0])
    monkeypatch.setattr(cache_mod, "_free_ram_gb", lambda: next(free))
    cache.poll(ram_headroom=4.0)
    assert cache.get("1") is None and cache.get("2") is not None


def test_progress_and_preview_order():
    sink = RecordingSink()
    dp = DynamicPrompt(graph(**{"9": ("X", {})}))
    reporter = ProgressReporter(sink, "p", dp, "client")
    reporter.start("9")
    reporter.update(2, 4, ("JPEG", Image.new("RGB", (8, 8)), 512), node_id="9")
    kinds = [(e if e != PREVIEW else ("preview", d[3])) for e, d, _ in sink.events]
    assert kinds == ["progress_state", "progress_state", ("preview", "metadata"), "progress", ("preview", "legacy")]
    progress = [d for e, d, _ in sink.events if e == "progress"][0]
    assert progress == {"value": 2, "max": 4, "prompt_id": "p", "node": "9"}
    assert all(sid == "client" for _, _, sid in sink.events)


def test_hub_sends_each_client_one_preview_frame():
    from server.ws import WebSocketHub
    hub = WebSocketHub({})
    hub.client_flags["new"] = {"supports_preview_metadata": True}
    frames = {(sid, want): hub._preview_frame(sid, "PNG", b"img", {"node_id": "1"}, want)
              for sid in ("new", "old", None) for want in ("metadata", "legacy")}
    assert frames[("new", "legacy")] is None and frames[("old", "metadata")] is None
    assert frames[("new", "metadata")][:4] == b"\x00\x00\x00\x04"
    assert frames[("old", "legacy")][:8] == b"\x00\x00\x00\x01\x00\x00\x00\x02"
    assert frames[(None, "legacy")][:4] == b"\x00\x00\x00\x01" and frames[(None, "metadata")] is None


@pytest.mark.parametrize("inputs,calls", [
    ({"a": [1, 2, 3], "b": [10]}, [{"a": 1, "b": 10}, {"a": 2, "b": 10}, {"a": 3, "b": 10}]),
    ({}, [{}]),
])
def test_call_plans_repeat_the_last_element(inputs, calls):
    from executor.node_calls import plan_calls
    assert [kw for _, kw in plan_calls(inputs, False)] == calls
    assert plan_calls(inputs, True) == [(0, inputs)]


def test_async_map_runs_coroutines_as_tasks():
    from executor.node_calls import map_over_lists, resolve

    class Node:
        async def run(self, x):
            await asyncio.sleep(0.01)
            return (x * 2,)

    async def go():
        results = await map_over_lists("p", "1", Node(), {"x": [1, 2]}, "run")
        assert all(isinstance(r, asyncio.Task) for r in results)
        return await resolve(results)
    assert asyncio.run(go()) == [(2,), (4,)]
