"""Execution semantics over HTTP and /ws beyond the basics: the exact event order including
`status`, cached replays, who receives what without a client_id, cache policies, POST /free,
node instances, hidden/undeclared/raw inputs, run-time cycles, idle interrupts
(API.md §10.4, §10.5, §11.5, §11.7, §11.10, §11.11)."""
import asyncio
import json

from wsclient import run_prompt, types


def graph(**nodes):
    return {k: {"class_type": v[0], "inputs": v[1]} for k, v in nodes.items()}


CHAIN = graph(**{"1": ("T_IntConst", {"value": 2}), "2": ("T_Add", {"a": ["1", 0], "b": 3}),
                 "3": ("T_ShowInt", {"value": ["2", 0]})})


def with_value(g, node, name, value):
    g = json.loads(json.dumps(g))
    g[node]["inputs"][name] = value
    return g


async def listen_until_history(client, ws, prompt_id, timeout=20.0):
    """Events on a socket (not the job's client) until the prompt's history entry exists."""
    events = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            msg = await asyncio.wait_for(ws.receive(), 0.2)
            if msg.type.name == "TEXT":
                m = json.loads(msg.data)
                events.append((m["type"], m["data"]))
            continue
        except asyncio.TimeoutError:
            pass
        hist = await (await client.get(f"/history/{prompt_id}")).json()
        if prompt_id in hist:
            await asyncio.sleep(0.2)  # let the last broadcasts arrive
            while True:
                try:
                    msg = await asyncio.wait_for(ws.receive(), 0.2)
                except asyncio.TimeoutError:
                    return events, hist[prompt_id]
                if msg.type.name == "TEXT":
                    m = json.loads(msg.data)
                    events.append((m["type"], m["data"]))
    raise AssertionError("prompt did not finish")


async def test_full_event_order_including_status(client, test_nodes):
    _, events, _ = await run_prompt(client, CHAIN)
    assert types(events) == [
        "status", "status", "execution_start", "execution_cached",
        "progress_state", "executing", "progress_state",
        "progress_state", "executing", "progress_state",
        "progress_state", "executing", "executed", "progress_state",
        "execution_success", "status", "executing"]
    statuses = [d["status"]["exec_info"]["queue_remaining"] for t, d in events if t == "status"]
    assert statuses == [1, 1, 0]  # queued, taken (a running job counts), done
    final = events[-1][1]
    assert final["node"] is None and "display_node" not in final


async def test_cached_output_node_is_replayed_not_executed(client, test_nodes):
    await run_prompt(client, CHAIN)
    _, events, hist = await run_prompt(client, CHAIN)
    assert types(events) == ["status", "status", "execution_start", "execution_cached",
                             "executed", "progress_state", "execution_success", "status", "executing"]
    executed = [d for t, d in events if t == "executed"][0]
    assert executed == {"node": "3", "display_node": "3", "output": {"text": ["5"]},
                        "prompt_id": executed["prompt_id"]}
    state = [d for t, d in events if t == "progress_state"][0]["nodes"]
    assert list(state) == ["3"] and state["3"]["state"] == "finished"
    assert hist["outputs"] == {"3": {"text": ["5"]}} and hist["meta"]["3"]["node_id"] == "3"


async def test_progress_state_fields(client, test_nodes):
    _, events, _ = await run_prompt(client, CHAIN)
    last = [d for t, d in events if t == "progress_state"][-1]
    assert set(last["nodes"]) == {"1", "2", "3"}
    assert last["nodes"]["2"] == {"value": 1.0, "max": 1.0, "state": "finished", "node_id": "2",
                                  "prompt_id": last["prompt_id"], "display_node_id": "2",
                                  "parent_node_id": None, "real_node_id": "2"}


async def test_without_client_id_only_broadcasts_reach_other_sockets(client, test_nodes):
    ws = await client.ws_connect("/ws?clientId=watcher")
    await ws.receive_json()
    resp = await client.post("/prompt", data=json.dumps({"prompt": CHAIN}))
    prompt_id = (await resp.json())["prompt_id"]
    events, hist = await listen_until_history(client, ws, prompt_id)
    seen = set(types(events))
    assert "status" in seen and "progress_state" in seen  # broadcast without a client
    assert not seen & {"execution_start", "execution_cached", "executing", "executed", "execution_success"}
    assert hist["status"]["status_str"] == "success"
    await ws.close()


async def test_interrupt_without_client_id_is_broadcast(client, test_nodes):
    g = graph(**{"1": ("T_IntConst", {"value": 1}), "2": ("T_Slow", {"value": ["1", 0], "ticks": 80}),
                 "3": ("T_ShowInt", {"value": ["2", 0]})})
    ws = await client.ws_connect("/ws?clientId=watcher")
    await ws.receive_json()
    prompt_id = (await (await client.post("/prompt", data=json.dumps({"prompt": g}))).json())["prompt_id"]
    while True:  # the first `progress` (broadcast) means the slow node is running
        m = await asyncio.wait_for(ws.receive_json(), 20)
        if m["type"] == "progress":
            break
    await client.post("/interrupt")
    events, hist = await listen_until_history(client, ws, prompt_id)
    interrupted = [d for t, d in events if t == "execution_interrupted"]
    assert len(interrupted) == 1
    assert interrupted[0]["node_id"] == "2" and interrupted[0]["node_type"] == "T_Slow"
    assert interrupted[0]["executed"] == ["1"]
    assert hist["status"] == {"status_str": "error", "completed": False, "messages": hist["status"]["messages"]}
    assert [m[0] for m in hist["status"]["messages"]] == ["execution_start", "execution_cached",
                                                          "execution_interrupted"]
    await ws.close()


async def test_interrupt_while_idle_does_nothing(client, test_nodes):
    assert (await client.post("/interrupt", data=b"not json")).status == 200
    _, _, hist = await run_prompt(client, CHAIN)
    assert hist["status"]["status_str"] == "success"


async def test_classic_cache_keeps_only_the_current_graph(client, test_nodes):
    a, b = CHAIN, with_value(CHAIN, "1", "value", 7)
    await run_prompt(client, a)
    await run_prompt(client, b)
    test_nodes.CALLS.clear()
    await run_prompt(client, a)  # A, B, A: A's results were evicted by B
    assert test_nodes.CALLS == [("IntConst", 2), ("Add", 2, 3), ("ShowInt", 5)]


async def test_lru_cache_keeps_earlier_graphs(aiohttp_client, make_args, test_nodes):
    from server.app import create_app
    c = await aiohttp_client(create_app(make_args("--cache-lru", "10")))
    a, b = CHAIN, with_value(CHAIN, "1", "value", 7)
    await run_prompt(c, a)
    await run_prompt(c, b)
    test_nodes.CALLS.clear()
    _, events, hist = await run_prompt(c, a)
    assert test_nodes.CALLS == []
    assert sorted([d for t, d in events if t == "execution_cached"][0]["nodes"]) == ["1", "2", "3"]
    assert hist["outputs"] == {"3": {"text": ["5"]}}


async def test_cache_ram_runs_and_caches(aiohttp_client, make_args, test_nodes):
    from server.app import create_app
    c = await aiohttp_client(create_app(make_args("--cache-ram", "0.001")))
    await run_prompt(c, CHAIN)
    test_nodes.CALLS.clear()
    await run_prompt(c, CHAIN)
    assert test_nodes.CALLS == []


async def test_free_memory_drops_the_cache(client, test_nodes):
    await run_prompt(client, CHAIN)
    assert (await client.post("/free", data=json.dumps({"free_memory": True}))).status == 200
    await asyncio.sleep(0.5)  # the worker picks the flag up between jobs
    test_nodes.CALLS.clear()
    await run_prompt(client, CHAIN)
    assert len(test_nodes.CALLS) == 3


async def test_node_instances_are_kept_between_prompts(client, test_nodes):
    g = graph(**{"1": ("T_IntConst", {"value": 1}), "2": ("T_Counter", {"value": ["1", 0]}),
                 "3": ("T_ShowInt", {"value": ["2", 0]})})
    _, _, first = await run_prompt(client, g)
    _, _, second = await run_prompt(client, g)
    assert first["outputs"]["3"] == {"text": ["1"]}
    assert second["outputs"]["3"] == {"text": ["2"]}  # same instance, its state carried over


async def test_hidden_undeclared_and_raw_link_inputs(client, test_nodes):
    g = graph(**{"1": ("T_IntConst", {"value": 4}), "2": ("T_IntConst", {"value": 9}),
                 "5": ("T_Inspect", {"value": ["1", 0], "raw": ["2", 0], "extra": ["2", 0], "ignored": 3})})
    data, _, hist = await run_prompt(client, g, extra={"extra_data": {"extra_pnginfo": {"workflow": {"id": "w"}}}})
    out = hist["outputs"]["5"]
    assert out["value"] == [4] and out["unique_id"] == ["5"]
    assert out["prompt_nodes"] == [["1", "2", "5"]]
    assert out["extra_pnginfo"] == [{"workflow": {"id": "w"}}]
    assert out["raw"] == [["2", 0]]  # rawLink: the link itself
    assert out["rest"] == [[["extra", 9]]]  # undeclared linked input passed, undeclared constant dropped
    assert ("IntConst", 9) in test_nodes.CALLS


async def test_cycle_created_by_expansion(client, test_nodes):
    g = graph(**{"1": ("T_IntConst", {"value": 1}), "2": ("T_LoopForever", {"value": ["1", 0]}),
                 "3": ("T_ShowInt", {"value": ["2", 0]})})
    _, events, hist = await run_prompt(client, g)
    err = [d for t, d in events if t == "execution_error"][0]
    assert err["exception_type"] == "graph.DependencyCycleError"
    assert err["exception_message"] == "Dependency cycle detected"
    assert err["traceback"] == [] and err["current_inputs"] == []
    assert err["node_id"] == "2" and err["node_type"] == "T_LoopForever"
    # ComfyUI 0.8.0 leaves the success flag as the last node left it
    assert hist["status"]["status_str"] == "success"
    assert hist["status"]["messages"][-1][0] == "execution_error"


async def test_error_then_fix_reuses_what_finished(client, test_nodes):
    bad = graph(**{"1": ("T_IntConst", {"value": 7}), "2": ("T_Fail", {"value": ["1", 0]}),
                   "3": ("T_ShowInt", {"value": ["2", 0]})})
    _, events, hist = await run_prompt(client, bad)
    err = [d for t, d in events if t == "execution_error"][0]
    assert sorted(err["current_outputs"]) == ["1", "2", "3"]
    assert hist["outputs"] == {}
    test_nodes.CALLS.clear()
    good = with_value(bad, "2", "value", ["1", 0])
    good["2"]["class_type"] = "T_Add"
    good["2"]["inputs"]["b"] = 1
    await run_prompt(client, good)
    assert ("IntConst", 7) not in test_nodes.CALLS  # its result stayed cached


async def test_cache_none_reports_no_current_outputs(aiohttp_client, make_args, test_nodes):
    from server.app import create_app
    c = await aiohttp_client(create_app(make_args("--cache-none")))
    bad = graph(**{"1": ("T_IntConst", {"value": 7}), "2": ("T_Fail", {"value": ["1", 0]}),
                   "3": ("T_ShowInt", {"value": ["2", 0]})})
    _, events, _ = await run_prompt(c, bad)
    assert [d for t, d in events if t == "execution_error"][0]["current_outputs"] == []


async def test_partial_execution_targets_run_only_their_branch(client, test_nodes):
    g = graph(**{"1": ("T_IntConst", {"value": 1}), "2": ("T_ShowInt", {"value": ["1", 0]}),
                 "3": ("T_IntConst", {"value": 2}), "4": ("T_ShowInt", {"value": ["3", 0]})})
    data, _, hist = await run_prompt(client, g, extra={"partial_execution_targets": ["4"]})
    assert list(hist["outputs"]) == ["4"] and hist["prompt"][4] == ["4"]
    assert ("IntConst", 1) not in test_nodes.CALLS
