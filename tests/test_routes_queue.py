"""/prompt validation errors, /queue, /history, /api/jobs over HTTP (API.md §2, §3)."""
import asyncio
import json

from wsclient import run_prompt

SLOW = {"1": {"class_type": "T_IntConst", "inputs": {"value": 1}},
        "2": {"class_type": "T_Slow", "inputs": {"value": ["1", 0], "ticks": 40}},
        "3": {"class_type": "T_ShowInt", "inputs": {"value": ["2", 0]}}}


def show(v):
    return {"1": {"class_type": "T_IntConst", "inputs": {"value": v}},
            "2": {"class_type": "T_ShowInt", "inputs": {"value": ["1", 0]}}}


async def post(client, body):
    r = await client.post("/prompt", data=json.dumps(body))
    return r.status, await r.json()


async def test_prompt_errors(client, test_nodes):
    assert await post(client, {}) == (400, {"error": {"type": "no_prompt", "message": "No prompt provided",
                                                      "details": "No prompt provided", "extra_info": {}},
                                            "node_errors": {}})
    status, body = await post(client, {"prompt": {"5": {"class_type": "Nope", "inputs": {}}}})
    assert status == 400 and body["error"]["type"] == "invalid_prompt"
    assert body["error"]["message"] == "Cannot execute because node Nope does not exist."
    assert body["error"]["details"] == "Node ID '#5'"
    status, body = await post(client, {"prompt": {"1": {"class_type": "T_IntConst", "inputs": {"value": 1}}}})
    assert body["error"]["type"] == "prompt_no_outputs"
    bad = show(5000)
    status, body = await post(client, {"prompt": bad})
    assert status == 400 and body["error"]["type"] == "prompt_outputs_failed_validation"
    err = body["node_errors"]["1"]
    assert err["class_type"] == "T_IntConst" and err["dependent_outputs"] == ["2"]
    assert err["errors"][0]["type"] == "value_bigger_than_max"
    assert err["errors"][0]["message"] == "Value 5000 bigger than max of 1000"
    assert err["errors"][0]["extra_info"]["input_config"] == ["INT", {"default": 0, "min": -100, "max": 1000}]
    missing = {"2": {"class_type": "T_ShowInt", "inputs": {}}}
    status, body = await post(client, {"prompt": missing})
    assert body["node_errors"]["2"]["errors"][0]["type"] == "required_input_missing"
    assert body["error"]["details"] == "Required input is missing: value"
    mismatch = {"1": {"class_type": "T_ListOut", "inputs": {"n": 1}},
                "2": {"class_type": "T_Checked", "inputs": {"value": 3}},
                "3": {"class_type": "T_ShowInt", "inputs": {"value": ["2", 0]}}}
    status, body = await post(client, {"prompt": mismatch})
    e = body["node_errors"]["2"]["errors"][0]
    assert e["type"] == "custom_validation_failed" and e["details"] == "value - must be even"
    status, body = await post(client, {"prompt": {"1": {"class_type": "T_ShowInt", "inputs": {"value": "x"}}}})
    assert body["node_errors"]["1"]["errors"][0]["type"] == "invalid_input_type"
    assert (await client.post("/prompt", data="[1,2]")).status == 400


async def test_partial_failure_is_200_with_node_errors(client, test_nodes):
    g = {**show(1), "3": {"class_type": "T_ShowInt", "inputs": {}}}
    status, body = await post(client, {"prompt": g})
    assert status == 200 and list(body["node_errors"]) == ["3"]


async def test_numbers_front_and_client_prompt_id(client, test_nodes):
    _, a = await post(client, {"prompt": show(1)})
    _, b = await post(client, {"prompt": show(2), "number": 5})
    _, c = await post(client, {"prompt": show(3), "prompt_id": 77})
    assert b["number"] == 5.0 and c["prompt_id"] == "77" and c["number"] == a["number"] + 1
    _, d = await post(client, {"prompt": show(4), "front": True})
    assert d["number"] == -(a["number"] + 2)


async def test_queue_listing_clear_and_delete(client, test_nodes):
    _, running = await post(client, {"prompt": SLOW, "client_id": "q"})
    for _ in range(100):
        if (await (await client.get("/queue")).json())["queue_running"]:
            break
        await asyncio.sleep(0.05)
    ids = [(await post(client, {"prompt": show(i)}))[1]["prompt_id"] for i in range(3)]
    q = await (await client.get("/queue")).json()
    assert q["queue_running"][0][1] == running["prompt_id"] and len(q["queue_running"][0]) == 5
    assert sorted(p[1] for p in q["queue_pending"]) == sorted(ids)
    assert (await (await client.get("/prompt")).json())["exec_info"]["queue_remaining"] == 4
    assert (await client.post("/queue", data=json.dumps({"delete": ids[0]}))).status == 200  # seed's string form
    assert (await client.post("/queue", data=json.dumps({"delete": [ids[1]]}))).status == 200
    q = await (await client.get("/api/queue")).json()
    assert [p[1] for p in q["queue_pending"]] == [ids[2]]
    await client.post("/queue", data=json.dumps({"clear": True}))
    assert (await (await client.get("/queue")).json())["queue_pending"] == []
    await client.post("/interrupt", data="")
    for _ in range(100):
        if not (await (await client.get("/queue")).json())["queue_running"]:
            break
        await asyncio.sleep(0.05)


async def test_history_paging_and_delete(client, test_nodes):
    ids = []
    for i in range(4):
        data, _, _ = await run_prompt(client, show(10 + i))
        ids.append(data["prompt_id"])
    assert list(await (await client.get("/history")).json()) == ids
    assert list(await (await client.get("/history?max_items=2")).json()) == ids[2:]
    assert list(await (await client.get("/history?offset=1&max_items=2")).json()) == ids[1:3]
    assert await (await client.get("/history?offset=9")).json() == {}
    assert list(await (await client.get(f"/history?prompt_id={ids[1]}")).json()) == [ids[1]]
    assert await (await client.get("/history/unknown")).json() == {}
    assert (await client.get("/history?max_items=x")).status == 400
    await client.post("/history", data=json.dumps({"delete": [ids[0]]}))
    assert list(await (await client.get("/history")).json()) == ids[1:]
    await client.post("/history", data=json.dumps({"clear": True}))
    assert await (await client.get("/history")).json() == {}


async def test_jobs_api(client, test_nodes):
    ok, _, _ = await run_prompt(client, show(1), extra={"extra_data": {"extra_pnginfo": {"workflow": {"id": "wf"}}}})
    bad = {"1": {"class_type": "T_IntConst", "inputs": {"value": 1}},
           "2": {"class_type": "T_Fail", "inputs": {"value": ["1", 0]}},
           "3": {"class_type": "T_ShowInt", "inputs": {"value": ["2", 0]}}}
    failed, _, _ = await run_prompt(client, bad)
    jobs = await (await client.get("/api/jobs?sort_order=asc")).json()
    assert [j["id"] for j in jobs["jobs"]] == [ok["prompt_id"], failed["prompt_id"]]
    assert jobs["pagination"] == {"offset": 0, "limit": None, "total": 2, "has_more": False}
    first = jobs["jobs"][0]
    assert first["status"] == "completed" and first["workflow_id"] == "wf"
    assert first["outputs_count"] == 0  # only dict items count (text entries are strings)
    assert jobs["jobs"][1]["status"] == "failed" and "execution_error" in jobs["jobs"][1]
    only_failed = await (await client.get("/api/jobs?status=failed")).json()
    assert [j["id"] for j in only_failed["jobs"]] == [failed["prompt_id"]]
    page = await (await client.get("/api/jobs?limit=1")).json()
    assert page["pagination"]["has_more"] is True and len(page["jobs"]) == 1
    one = await (await client.get(f"/api/jobs/{ok['prompt_id']}")).json()
    assert one["outputs"] == {"2": {"text": ["1"]}} and one["workflow"]["prompt"]["1"]["class_type"] == "T_IntConst"
    assert (await client.get("/api/api/jobs")).status == 200
    assert (await client.get("/jobs")).status == 404
    r = await client.get("/api/jobs/nope")
    assert r.status == 404 and await r.json() == {"error": "Job not found"}
    for query, msg in (("status=bogus", "Invalid status value(s): bogus. Valid values: pending, in_progress, completed, failed"),
                       ("sort_by=x", "sort_by must be 'created_at' or 'execution_duration'"),
                       ("sort_order=up", "sort_order must be 'asc' or 'desc'"),
                       ("limit=0", "limit must be a positive integer"), ("limit=a", "limit must be an integer"),
                       ("offset=a", "offset must be an integer")):
        r = await client.get(f"/api/jobs?{query}")
        assert r.status == 400 and await r.json() == {"error": msg}


async def test_interrupt_get_form_and_free(client, test_nodes):
    assert (await client.get("/interrupt")).status == 200
    assert (await client.post("/interrupt", data=json.dumps({"prompt_id": "not-running"}))).status == 200
    assert (await client.post("/free", data=json.dumps({"unload_models": True, "free_memory": True}))).status == 200
    assert (await client.post("/free", data="")).status == 400
    data, _, hist = await run_prompt(client, show(3))  # the queue still works afterwards
    assert hist["status"]["status_str"] == "success"
