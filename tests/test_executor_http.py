"""Execution semantics over HTTP: event order, caching, errors, lazy inputs, expansion,
lists, blockers, async nodes, interrupts (API.md §10.5, §11)."""
import asyncio
import json

from wsclient import run_prompt, types


def graph(**nodes):
    return {k: {"class_type": v[0], "inputs": v[1]} for k, v in nodes.items()}


SIMPLE = graph(**{"1": ("T_IntConst", {"value": 2}), "2": ("T_Add", {"a": ["1", 0], "b": 3}),
                  "3": ("T_ShowInt", {"value": ["2", 0]})})


async def test_event_sequence_and_history(client, test_nodes):
    data, events, hist = await run_prompt(client, SIMPLE)
    assert data["node_errors"] == {} and isinstance(data["number"], int)
    seq = types(events)
    # status when queued (maybe) and when taken, then the run
    start = seq.index("execution_start")
    assert seq[start:start + 2] == ["execution_start", "execution_cached"]
    run = [t for t in seq[start + 2:] if t != "status"]
    assert run == ["progress_state", "executing", "progress_state",
                   "progress_state", "executing", "progress_state",
                   "progress_state", "executing", "executed", "progress_state",
                   "execution_success", "executing"]
    assert seq[-2] == "status"  # queue emptied before the final executing
    executed = [d for t, d in events if t == "executed"][0]
    assert executed["output"] == {"text": ["5"]} and executed["node"] == "3"
    assert list(hist) == ["prompt", "outputs", "status", "meta"]
    assert hist["outputs"] == {"3": {"text": ["5"]}}
    assert hist["status"]["status_str"] == "success" and hist["status"]["completed"] is True
    assert [m[0] for m in hist["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    assert hist["meta"]["3"] == {"node_id": "3", "display_node": "3", "parent_node": None, "real_node_id": "3"}
    assert hist["prompt"][4] == ["3"]


async def test_second_run_is_fully_cached(client, test_nodes):
    await run_prompt(client, SIMPLE)
    test_nodes.CALLS.clear()
    _, events, hist = await run_prompt(client, SIMPLE)
    cached = [d for t, d in events if t == "execution_cached"][0]
    assert sorted(cached["nodes"]) == ["1", "2", "3"]
    assert "executing" not in [t for t, d in events if d.get("node") is not None]
    assert test_nodes.CALLS == []
    assert hist["outputs"] == {"3": {"text": ["5"]}}  # cached UI replayed


async def test_partial_cache_reruns_only_downstream(client, test_nodes):
    await run_prompt(client, SIMPLE)
    test_nodes.CALLS.clear()
    changed = json.loads(json.dumps(SIMPLE))
    changed["2"]["inputs"]["b"] = 4
    await run_prompt(client, changed)
    assert test_nodes.CALLS == [("Add", 2, 4), ("ShowInt", 6)]


async def test_cache_none_runs_everything(aiohttp_client, make_args, test_nodes):
    from server.app import create_app
    c = await aiohttp_client(create_app(make_args("--cache-none")))
    await run_prompt(c, SIMPLE)
    test_nodes.CALLS.clear()
    await run_prompt(c, SIMPLE)
    assert len(test_nodes.CALLS) == 3


async def test_is_changed_nan_forces_rerun(client, test_nodes):
    g = graph(**{"1": ("T_IntConst", {"value": 1}), "2": ("T_Changing", {"value": ["1", 0]}),
                 "3": ("T_ShowInt", {"value": ["2", 0]})})
    await run_prompt(client, g)
    test_nodes.CALLS.clear()
    await run_prompt(client, g)
    assert ("Changing", 1) in test_nodes.CALLS and ("IntConst", 1) not in test_nodes.CALLS


async def test_execution_error_fields(client, test_nodes):
    g = graph(**{"1": ("T_IntConst", {"value": 7}), "2": ("T_Fail", {"value": ["1", 0]}),
                 "3": ("T_ShowInt", {"value": ["2", 0]})})
    _, events, hist = await run_prompt(client, g)
    err = [d for t, d in events if t == "execution_error"][0]
    assert err["node_id"] == "2" and err["node_type"] == "T_Fail"
    assert err["exception_message"] == "bad value 7\n" and err["exception_type"] == "ValueError"
    assert err["executed"] == ["1"] and err["current_inputs"] == {"value": [7]}
    assert isinstance(err["traceback"], list) and "timestamp" in err
    assert hist["status"]["status_str"] == "error" and hist["status"]["completed"] is False
    # the queue keeps working
    _, _, ok = await run_prompt(client, SIMPLE)
    assert ok["status"]["status_str"] == "success"


async def test_lazy_input_skips_unneeded_branch(client, test_nodes):
    g = graph(**{"1": ("T_IntConst", {"value": 1}), "2": ("T_IntConst", {"value": 2}),
                 "3": ("T_LazyPick", {"use_a": False, "a": ["1", 0], "b": ["2", 0]}),
                 "4": ("T_ShowInt", {"value": ["3", 0]})})
    _, _, hist = await run_prompt(client, g)
    assert hist["outputs"]["4"] == {"text": ["2"]}
    assert ("IntConst", 1) not in test_nodes.CALLS


async def test_expansion_ids_and_display_node(client, test_nodes):
    g = graph(**{"1": ("T_IntConst", {"value": 5}), "2": ("T_Expand", {"value": ["1", 0]}),
                 "3": ("T_ShowInt", {"value": ["2", 0]})})
    _, events, hist = await run_prompt(client, g)
    assert hist["outputs"]["3"] == {"text": ["15"]}
    running = [d for t, d in events if t == "executing" and d["node"] is not None]
    generated = [d for d in running if d["node"].startswith("2.")]
    assert {d["node"] for d in generated} == {"2.0.0.1", "2.0.0.2"}
    assert all(d["display_node"] == "2" for d in generated)
    assert [d["node"] for d in running].count("2") == 1


async def test_lists_and_input_is_list(client, test_nodes):
    g = graph(**{"1": ("T_ListOut", {"n": 4}), "2": ("T_Add", {"a": ["1", 0], "b": 10}),
                 "3": ("T_SumList", {"values": ["2", 0]}), "4": ("T_ShowInt", {"value": ["3", 0]}),
                 "5": ("T_ShowInt", {"value": ["2", 0]})})
    _, _, hist = await run_prompt(client, g)
    assert hist["outputs"]["4"] == {"text": ["46"]}
    assert hist["outputs"]["5"] == {"text": ["10", "11", "12", "13"]}  # UI merged over calls


async def test_execution_blocker(client, test_nodes):
    g = graph(**{"1": ("T_IntConst", {"value": 1}), "2": ("T_Block", {"value": ["1", 0], "message": "stop here"}),
                 "3": ("T_ShowInt", {"value": ["2", 0]})})
    _, events, hist = await run_prompt(client, g)
    err = [d for t, d in events if t == "execution_error"][0]
    assert err["exception_type"] == "ExecutionBlocked" and err["exception_message"] == "Execution Blocked: stop here"
    assert "timestamp" not in err
    assert "execution_success" in types(events)
    assert hist["outputs"] == {}


async def test_async_node(client, test_nodes):
    g = graph(**{"1": ("T_IntConst", {"value": 4}), "2": ("T_AsyncDouble", {"value": ["1", 0]}),
                 "3": ("T_ShowInt", {"value": ["2", 0]})})
    _, _, hist = await run_prompt(client, g)
    assert hist["outputs"]["3"] == {"text": ["8"]}


async def test_progress_events_from_node(client, test_nodes):
    g = graph(**{"1": ("T_IntConst", {"value": 4}), "2": ("T_Slow", {"value": ["1", 0], "ticks": 3}),
                 "3": ("T_ShowInt", {"value": ["2", 0]})})
    _, events, _ = await run_prompt(client, g)
    prog = [d for t, d in events if t == "progress"]
    assert [(p["value"], p["max"], p["node"]) for p in prog] == [(1, 3, "2"), (2, 3, "2"), (3, 3, "2")]
    states = [d for t, d in events if t == "progress_state"]
    assert states[-1]["nodes"]["2"]["state"] == "finished"


async def test_interrupt_inside_node(client, test_nodes):
    g = graph(**{"1": ("T_IntConst", {"value": 4}), "2": ("T_Slow", {"value": ["1", 0], "ticks": 60}),
                 "3": ("T_ShowInt", {"value": ["2", 0]})})
    ws = await client.ws_connect("/ws?clientId=intr")
    await ws.receive_json()
    data = await (await client.post("/prompt", data=json.dumps({"prompt": g, "client_id": "intr"}))).json()
    seen = []
    while True:
        m = await asyncio.wait_for(ws.receive_json(), 20)
        seen.append(m["type"])
        if m["type"] == "progress":
            await client.post("/interrupt", data=json.dumps({"prompt_id": data["prompt_id"]}))
        if m["type"] == "executing" and m["data"]["node"] is None:
            break
    assert "execution_interrupted" in seen and "execution_success" not in seen
    hist = (await (await client.get(f"/history/{data['prompt_id']}")).json())[data["prompt_id"]]
    assert hist["status"]["status_str"] == "error"
    assert hist["status"]["messages"][-1][0] == "execution_interrupted"
    await ws.close()
