"""GET/POST /queue, /history, /history/{id}, /api/jobs, /api/jobs/{id} over HTTP (API.md §2.3–§2.11).

The worker is kept from starting, so jobs put on the queue stay where the test puts them;
the test takes one (queue.get) to make it "running" and finishes it (task_done) for history.
"""
import json

import pytest

from executor.queue import ExecutionStatus
from server.app import QUEUE, WORKER, create_app

SECRET = {"api_key_comfy_org": "sk-secret"}


@pytest.fixture
async def idle(aiohttp_client, make_args):
    """(client, queue) of an app whose worker never runs."""
    app = create_app(make_args())
    app[WORKER].start = lambda: None
    client = await aiohttp_client(app)
    return client, app[QUEUE]


def job(q, pid, create_time=1000, workflow_id=None, number=None):
    extra = {"client_id": "c1", "create_time": create_time}
    if workflow_id:
        extra["extra_pnginfo"] = {"workflow": {"id": workflow_id}}
    return (q.next_number() if number is None else number, pid,
            {"9": {"class_type": "SaveImage", "inputs": {}}}, extra, ["9"], dict(SECRET))


def finish(q, status="success", outputs=None, start=100, end=400):
    item, item_id = q.get(timeout=1)
    end_event = {"success": "execution_success", "error": "execution_error"}[status]
    messages = [["execution_start", {"prompt_id": item[1], "timestamp": start}],
                [end_event, {"prompt_id": item[1], "timestamp": end,
                             **({"exception_message": "boom", "node_id": "9"} if status == "error" else {})}]]
    q.task_done(item_id, {"outputs": outputs or {}, "meta": {}},
                ExecutionStatus(status, status == "success", messages))
    return item


async def get_json(client, path, status=200):
    resp = await client.get(path)
    assert resp.status == status, (path, resp.status, await resp.text())
    return await resp.json()


async def post(client, path, body, status=200):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    resp = await client.post(path, data=data)
    text = await resp.text()
    assert resp.status == status, (path, body, resp.status, text)
    return json.loads(text) if text else None


# -- /queue -------------------------------------------------------------------------------

async def test_get_queue_shapes_and_no_sensitive_slot(idle):
    client, q = idle
    assert await get_json(client, "/queue") == {"queue_running": [], "queue_pending": []}
    for pid in ("a", "b", "c"):
        q.put(job(q, pid))
    q.get(timeout=1)
    for path in ("/queue", "/api/queue"):
        data = await get_json(client, path)
        assert [x[1] for x in data["queue_running"]] == ["a"]
        assert sorted(x[1] for x in data["queue_pending"]) == ["b", "c"]
        item = data["queue_pending"][0]
        assert len(item) == 5 and item[2]["9"]["class_type"] == "SaveImage" and item[4] == ["9"]
        assert "sk-secret" not in json.dumps(data)


async def test_post_queue_delete_list_string_and_clear(idle):
    client, q = idle
    for pid in ("run", "a", "b", "c", "d"):
        q.put(job(q, pid))
    q.get(timeout=1)  # "run" is running

    def pending():
        return sorted(x[1] for x in q.get_current_queue()[1])
    assert await post(client, "/queue", {"delete": ["a", "missing", "run"]}) is None  # empty 200
    assert pending() == ["b", "c", "d"]
    await post(client, "/api/queue", {"delete": "b"})  # the seed document's string form: one id
    assert pending() == ["c", "d"]
    await post(client, "/queue", {"delete": []})
    await post(client, "/queue", {"clear": False})
    assert pending() == ["c", "d"]
    await post(client, "/queue", {"clear": True, "delete": ["c"]})
    assert pending() == [] and q.running_prompt_ids() == ["run"]  # running jobs are left alone


async def test_post_queue_deletes_the_first_match_per_id(idle):
    client, q = idle
    q.put(job(q, "dup"))
    q.put(job(q, "dup"))
    await post(client, "/queue", {"delete": ["dup"]})
    assert [x[1] for x in q.get_current_queue()[1]] == ["dup"]


@pytest.mark.parametrize("body", ["", "{not json", "[1, 2]", '"clear"', json.dumps({"delete": 5}),
                                  json.dumps({"delete": ["a", 3]}), json.dumps({"delete": {"a": 1}})])
async def test_post_queue_bad_bodies_are_400(idle, body):
    client, q = idle
    q.put(job(q, "a"))
    data = await post(client, "/queue", body, status=400)
    assert isinstance(data["error"], str) and data["error"]
    assert [x[1] for x in q.get_current_queue()[1]] == ["a"]  # nothing touched


# -- /history -----------------------------------------------------------------------------

async def fill_history(q, ids):
    for pid in ids:
        q.put(job(q, pid))
        finish(q, outputs={"9": {"images": [{"filename": f"{pid}.png", "subfolder": "", "type": "output"}]}})


async def test_history_entries_and_selection(idle):
    client, q = idle
    await fill_history(q, "abcde")
    everything = await get_json(client, "/history")
    assert list(everything) == list("abcde")  # completion order, oldest first
    entry = everything["c"]
    assert list(entry) == ["prompt", "outputs", "status", "meta"]
    assert entry["prompt"][1] == "c" and len(entry["prompt"]) == 5
    assert entry["outputs"]["9"]["images"][0]["filename"] == "c.png"
    assert "sk-secret" not in json.dumps(everything)
    cases = {"max_items=2": "de", "max_items=2&offset=1": "bc", "offset=3": "de", "offset=0": "abcde",
             "offset=-1&max_items=1": "e", "offset=5": "", "offset=99&max_items=2": "", "max_items=0": "",
             "max_items=50": "abcde"}
    for query, expected in cases.items():
        for prefix in ("", "/api"):
            assert list(await get_json(client, f"{prefix}/history?{query}")) == list(expected), query


async def test_history_by_id_and_prompt_id_query(idle):
    client, q = idle
    await fill_history(q, "ab")
    one = await get_json(client, "/history/b")
    assert list(one) == ["b"] and one["b"]["prompt"][1] == "b"
    assert await get_json(client, "/api/history/b") == one
    assert await get_json(client, "/history?prompt_id=b") == one  # the seed document's lookup
    assert await get_json(client, "/history/nope") == {}
    assert await get_json(client, "/history?prompt_id=nope") == {}
    assert list(await get_json(client, "/history?prompt_id=")) == ["a", "b"]  # empty = not given


@pytest.mark.parametrize("query", ["max_items=abc", "offset=1.5", "max_items=", "max_items=-1", "offset=x"])
async def test_history_bad_numbers_are_400(idle, query):
    client, q = idle
    data = await get_json(client, f"/history?{query}", status=400)
    assert ("max_items" in data["error"]) or ("offset" in data["error"])


async def test_post_history_delete_and_clear(idle):
    client, q = idle
    await fill_history(q, "abcd")
    await post(client, "/history", {"delete": ["a", "missing"]})
    assert list(await get_json(client, "/history")) == ["b", "c", "d"]
    await post(client, "/api/history", {"delete": "b"})
    assert list(await get_json(client, "/history")) == ["c", "d"]
    await post(client, "/history", {"clear": True})
    assert await get_json(client, "/history") == {}


@pytest.mark.parametrize("body", ["", "nope", "[]", json.dumps({"delete": 1}), json.dumps({"delete": [["a"]]})])
async def test_post_history_bad_bodies_are_400(idle, body):
    client, q = idle
    await fill_history(q, "a")
    data = await post(client, "/history", body, status=400)
    assert data["error"]
    assert list(q.get_history()) == ["a"]


# -- /api/jobs ----------------------------------------------------------------------------

async def fill_jobs(q):
    """ok (completed, t=1000), bad (failed, t=2000), run (in_progress, t=3000), wait (pending, t=4000)."""
    q.put(job(q, "ok", create_time=1000, workflow_id="wf-1"))
    finish(q, outputs={"9": {"images": [{"filename": "t.png", "subfolder": "", "type": "temp"},
                                        {"filename": "o.png", "subfolder": "", "type": "output"}],
                             "animated": [True]}}, start=100, end=400)
    q.put(job(q, "bad", create_time=2000))
    finish(q, status="error", start=100, end=150)
    q.put(job(q, "run", create_time=3000, workflow_id="wf-1"))
    q.get(timeout=1)
    q.put(job(q, "wait", create_time=4000))


async def test_jobs_list_default_filters_sorting_paging(idle):
    client, q = idle
    await fill_jobs(q)
    data = await get_json(client, "/api/jobs")
    assert [j["id"] for j in data["jobs"]] == ["wait", "run", "bad", "ok"]  # newest first
    assert data["pagination"] == {"offset": 0, "limit": None, "total": 4, "has_more": False}
    by_id = {j["id"]: j for j in data["jobs"]}
    assert by_id["wait"] == {"id": "wait", "status": "pending", "priority": 3, "create_time": 4000,
                             "outputs_count": 0}
    assert by_id["run"]["status"] == "in_progress" and by_id["run"]["workflow_id"] == "wf-1"
    ok = by_id["ok"]
    assert ok["status"] == "completed" and ok["outputs_count"] == 2
    assert ok["execution_start_time"] == 100 and ok["execution_end_time"] == 400
    assert ok["preview_output"] == {"filename": "o.png", "subfolder": "", "type": "output", "nodeId": "9",
                                    "mediaType": "images"}
    assert by_id["bad"]["status"] == "failed" and by_id["bad"]["execution_error"]["exception_message"] == "boom"
    assert "sk-secret" not in json.dumps(data)

    async def ids(query):
        return [j["id"] for j in (await get_json(client, f"/api/jobs?{query}"))["jobs"]]
    assert await ids("status=completed,FAILED") == ["bad", "ok"]
    assert await ids("status=pending") == ["wait"]
    assert await ids("status=in_progress,pending&sort_order=ASC") == ["run", "wait"]
    assert await ids("workflow_id=wf-1") == ["run", "ok"]
    assert await ids("sort_by=execution_duration") == ["ok", "bad", "run", "wait"]  # stable: queue first
    page = await get_json(client, "/api/jobs?limit=2&offset=1")
    assert [j["id"] for j in page["jobs"]] == ["run", "bad"]
    assert page["pagination"] == {"offset": 1, "limit": 2, "total": 4, "has_more": True}
    assert (await get_json(client, "/api/jobs?offset=-5&limit=1"))["pagination"]["offset"] == 0
    assert await get_json(client, "/api/api/jobs") == data  # the /api twin of an /api route


@pytest.mark.parametrize("query,message", [
    ("status=done", "Invalid status value(s): done. Valid values: pending, in_progress, completed, failed"),
    ("sort_by=name", "sort_by must be 'created_at' or 'execution_duration'"),
    ("sort_order=up", "sort_order must be 'asc' or 'desc'"),
    ("limit=0", "limit must be a positive integer"),
    ("limit=x", "limit must be an integer"),
    ("offset=x", "offset must be an integer"),
])
async def test_jobs_list_errors(idle, query, message):
    client, _ = idle
    assert await get_json(client, f"/api/jobs?{query}", status=400) == {"error": message}


async def test_jobs_cancelled_filter_of_newer_frontends_matches_nothing(idle):
    client, _ = idle
    everything = await get_json(client, "/api/jobs?status=completed,failed")
    with_cancelled = await get_json(client, "/api/jobs?status=completed,failed,cancelled")
    assert with_cancelled == everything
    assert (await get_json(client, "/api/jobs?status=cancelled"))["jobs"] == []


async def test_job_by_id(idle):
    client, q = idle
    await fill_jobs(q)
    ok = await get_json(client, "/api/jobs/ok")
    assert ok["status"] == "completed" and ok["outputs"]["9"]["images"][1]["filename"] == "o.png"
    assert ok["execution_status"]["status_str"] == "success"
    assert ok["workflow"]["prompt"]["9"]["class_type"] == "SaveImage"
    assert ok["workflow"]["extra_data"]["create_time"] == 1000 and "sk-secret" not in json.dumps(ok)
    assert (await get_json(client, "/api/jobs/run"))["status"] == "in_progress"
    assert (await get_json(client, "/api/api/jobs/wait"))["status"] == "pending"
    assert await get_json(client, "/api/jobs/nope", status=404) == {"error": "Job not found"}


async def test_no_plain_jobs_route(idle):
    client, _ = idle
    assert (await client.get("/jobs")).status == 404
    assert (await client.get("/jobs/x")).status == 404


# -- the app's queue and history are the persistent ones ---------------------------------

async def test_a_new_app_on_the_same_folders_sees_the_queue_and_history(aiohttp_client, make_args, base_dir):
    app = create_app(make_args())
    app[WORKER].start = lambda: None
    client = await aiohttp_client(app)
    q = app[QUEUE]
    await fill_jobs(q)
    assert (base_dir / "user" / "__comfyd" / "queue.sqlite3").is_file()
    await client.close()

    app2 = create_app(make_args())
    app2[WORKER].start = lambda: None
    client2 = await aiohttp_client(app2)
    queue = await get_json(client2, "/queue")
    assert queue["queue_running"] == [] and [x[1] for x in queue["queue_pending"]] == ["wait"]
    history = await get_json(client2, "/history")
    assert list(history) == ["ok", "bad", "run"]
    assert history["run"]["status"]["messages"][-1][0] == "execution_interrupted"
    assert (await get_json(client2, "/api/jobs/run"))["status"] == "failed"
    # the user-data routes cannot reach the store's folder
    assert (await client2.get("/userdata/..%2F__comfyd%2Fqueue.sqlite3")).status in (400, 403, 404)
