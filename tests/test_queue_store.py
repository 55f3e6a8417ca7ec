"""The queue store (executor/store.py) and the PromptQueue persisting through it."""
import os
import stat
import threading

import numpy as np

from executor.queue import ExecutionStatus, PromptQueue
from executor.store import MemoryStore, SqliteStore, open_store

OK = ExecutionStatus("success", True, [])


def job(number, pid, sensitive=None, create_time=1000):
    return (number, pid, {"1": {"class_type": "X", "inputs": {"v": number}}},
            {"client_id": "c", "create_time": create_time}, ["1"], sensitive or {})


def finish(q, outputs=None, status=OK):
    item, item_id = q.get(timeout=1)
    q.task_done(item_id, {"outputs": outputs or {}, "meta": {}}, status)
    return item


def reopen(path, **kw):
    return PromptQueue(store=SqliteStore(path), **kw)


def test_pending_jobs_come_back_in_order_with_everything(tmp_path):
    path = str(tmp_path / "q.sqlite3")
    q = reopen(path)
    q.put(job(q.next_number(), "a", sensitive={"api_key_comfy_org": "secret"}, create_time=111))
    q.put(job(q.next_number(), "b"))
    q.put(job(5.0, "c"))  # explicit numbers are floats and keep their type
    q.put(job(-q.next_number(), "front"))
    before = q.get_current_queue()[1]
    q2 = reopen(path)
    after = q2.get_current_queue()[1]
    assert sorted(map(tuple, [x[:2] for x in after])) == sorted(map(tuple, [x[:2] for x in before]))
    taken = [q2.get(timeout=1)[0] for _ in range(4)]
    assert [t[1] for t in taken] == ["front", "a", "b", "c"]
    assert taken[1][3] == {"client_id": "c", "create_time": 111} and taken[1][4] == ["1"]
    assert taken[1][5] == {"api_key_comfy_org": "secret"}  # the sensitive slot is kept for the run
    assert isinstance(taken[3][0], float) and taken[3][0] == 5.0
    assert all("api_key_comfy_org" not in str(x) for x in q2.get_current_queue()[1])


def test_running_job_becomes_interrupted_and_is_not_requeued(tmp_path):
    path = str(tmp_path / "q.sqlite3")
    q = reopen(path)
    for pid in "abc":
        q.put(job(q.next_number(), pid))
    finish(q, outputs={"1": {"text": ["x"]}})
    q.get(timeout=1)  # "b" is running when the process "dies"
    q2 = reopen(path)
    running, pending = q2.get_current_queue()
    assert running == [] and [p[1] for p in pending] == ["c"]
    hist = q2.get_history()
    assert list(hist) == ["a", "b"]
    assert hist["a"]["outputs"] == {"1": {"text": ["x"]}} and hist["a"]["status"]["status_str"] == "success"
    b = hist["b"]
    assert list(b) == ["prompt", "outputs", "status", "meta"]
    assert b["prompt"][1] == "b" and len(b["prompt"]) == 5
    assert b["status"]["status_str"] == "error" and b["status"]["completed"] is False
    names = [m[0] for m in b["status"]["messages"]]
    assert names == ["execution_start", "execution_interrupted"]
    interrupted = b["status"]["messages"][1][1]
    assert interrupted["prompt_id"] == "b" and "restarted" in interrupted["reason"]
    assert interrupted["timestamp"] >= b["status"]["messages"][0][1]["timestamp"]
    # a third start sees the same thing: recorded once, never run
    q3 = reopen(path)
    assert list(q3.get_history()) == ["a", "b"] and [p[1] for p in q3.get_current_queue()[1]] == ["c"]
    assert q3.get_history()["b"] == b


def test_number_counter_continues_above_every_number(tmp_path):
    path = str(tmp_path / "q.sqlite3")
    q = reopen(path)
    numbers = [q.next_number() for _ in range(3)]  # 0, 1, 2 handed out (the last not even queued)
    q.put(job(numbers[0], "a"))
    assert reopen(path).next_number() == 3
    # without the stored counter, queued and finished numbers still bound it (front ones negated)
    store = SqliteStore(path)
    store.db.execute("DELETE FROM meta")
    q = PromptQueue(store=store)
    q.put(job(-7, "f"))
    finish(q)
    store.db.execute("DELETE FROM meta")
    assert reopen(path).next_number() == 8


def test_history_limit_and_completion_order_on_disk(tmp_path):
    path = str(tmp_path / "q.sqlite3")
    q = reopen(path, max_history=3)
    for pid in "abcd":
        q.put(job(q.next_number(), pid))
        finish(q)
    assert list(q.get_history()) == ["b", "c", "d"]
    assert list(reopen(path, max_history=3).get_history()) == ["b", "c", "d"]
    # a reused prompt id replaces its entry and becomes the newest
    q = reopen(path, max_history=3)
    q.put(job(q.next_number(), "b"))
    finish(q, outputs={"1": {"n": [2]}})
    assert list(q.get_history()) == ["c", "d", "b"]
    assert list(reopen(path, max_history=3).get_history()) == ["c", "d", "b"]
    # a lower --max-history at the next start drops the oldest
    assert list(reopen(path, max_history=2).get_history()) == ["d", "b"]
    assert list(reopen(path, max_history=10).get_history()) == ["d", "b"]


def test_clear_and_delete_are_persisted(tmp_path):
    path = str(tmp_path / "q.sqlite3")
    q = reopen(path)
    for pid in "abcde":
        q.put(job(q.next_number(), pid))
    finish(q)
    finish(q)
    running_item, _ = q.get(timeout=1)  # "c" runs
    assert q.delete_queue_item(lambda item: item[1] == "d")
    assert not q.delete_queue_item(lambda item: item[1] == "nope")
    q.delete_history_item("a")
    q2 = reopen(path)
    assert [p[1] for p in q2.get_current_queue()[1]] == ["e"]
    assert list(q2.get_history()) == ["b", "c"]  # "c" recorded as interrupted
    q2.wipe_queue()
    q2.wipe_history()
    q3 = reopen(path)
    assert q3.get_current_queue() == ([], []) and q3.get_history() == {}


def test_wipe_queue_keeps_the_running_job(tmp_path):
    path = str(tmp_path / "q.sqlite3")
    q = reopen(path)
    for pid in "ab":
        q.put(job(q.next_number(), pid))
    item, item_id = q.get(timeout=1)
    q.wipe_queue()
    q.task_done(item_id, {"outputs": {}, "meta": {}}, OK)
    q2 = reopen(path)
    assert list(q2.get_history()) == ["a"] and q2.get_history()["a"]["status"]["status_str"] == "success"
    assert q2.get_current_queue() == ([], [])


def test_odd_values_in_outputs_are_still_recorded(tmp_path):
    path = str(tmp_path / "q.sqlite3")
    q = reopen(path)
    q.put(job(q.next_number(), "a"))
    finish(q, outputs={"1": {"value": [np.float32(0.5)], "tags": [{"x"}], "obj": [object()]}})
    out = reopen(path).get_history()["a"]["outputs"]["1"]
    assert out["value"] == [0.5] and out["tags"] == [["x"]] and out["obj"][0].startswith("<object")


def test_store_file_is_private_and_a_corrupt_file_is_moved_aside(tmp_path):
    path = tmp_path / "sub" / "q.sqlite3"
    SqliteStore(str(path)).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    path.write_bytes(b"this is not a database" * 100)
    q = reopen(str(path))  # starts empty rather than failing
    assert q.get_current_queue() == ([], []) and q.get_history() == {}
    q.put(job(q.next_number(), "a"))
    assert [p[1] for p in reopen(str(path)).get_current_queue()[1]] == ["a"]
    assert any(name.startswith("q.sqlite3.corrupt-") for name in os.listdir(path.parent))


def test_a_failing_store_does_not_stop_the_queue(tmp_path, caplog):
    store = SqliteStore(str(tmp_path / "q.sqlite3"))
    q = PromptQueue(store=store)
    store.close()  # every write now fails
    q.put(job(q.next_number(), "a"))
    finish(q)
    assert list(q.get_history()) == ["a"]
    assert "could not write the queue store" in caplog.text


def test_concurrent_puts_from_threads_all_persist(tmp_path):
    path = str(tmp_path / "q.sqlite3")
    q = reopen(path)

    def submit(t):
        for i in range(25):
            q.put(job(q.next_number(), f"{t}-{i}"))
    threads = [threading.Thread(target=submit, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pending = reopen(path).get_current_queue()[1]
    assert len(pending) == 100 and len({p[1] for p in pending}) == 100
    assert sorted(p[0] for p in pending) == list(range(100))


def test_memory_store_keeps_nothing():
    q = PromptQueue(store=MemoryStore())
    q.put(job(q.next_number(), "a"))
    finish(q)
    assert list(q.get_history()) == ["a"]
    assert PromptQueue().get_history() == {}


def test_get_history_selection_rules():
    q = PromptQueue()
    for pid in "abcde":
        q.put(job(q.next_number(), pid))
        finish(q)
    assert list(q.get_history()) == list("abcde")
    assert list(q.get_history(max_items=2)) == ["d", "e"]
    assert list(q.get_history(max_items=2, offset=1)) == ["b", "c"]
    assert list(q.get_history(offset=3)) == ["d", "e"]
    assert list(q.get_history(offset=0)) == list("abcde")
    assert q.get_history(offset=5) == {} and q.get_history(max_items=0) == {}
    assert list(q.get_history(max_items=9)) == list("abcde")
    assert list(q.get_history(prompt_id="c")) == ["c"] and q.get_history(prompt_id="zz") == {}


def test_servers_sharing_a_folder_get_separate_queues(tmp_path, caplog):
    first = open_store(str(tmp_path), 8188)
    PromptQueue(store=first).put(job(0, "mine"))
    second = open_store(str(tmp_path), 8189)  # e.g. a second GPU's server on the same base directory
    assert os.path.basename(second.path) == "queue-8189.sqlite3"
    assert PromptQueue(store=second).get_current_queue() == ([], [])  # it does not take "mine"
    third = open_store(str(tmp_path), 8189)
    assert type(third) is MemoryStore and "will not survive a restart" in caplog.text
    first.close()
    again = open_store(str(tmp_path), 8188)
    assert os.path.basename(again.path) == "queue.sqlite3"
    assert [p[1] for p in PromptQueue(store=again).get_current_queue()[1]] == ["mine"]
    second.close()
    again.close()


def test_history_entries_are_owned_by_the_queue():
    q = PromptQueue()
    q.put(job(q.next_number(), "a"))
    item, item_id = q.get(timeout=1)
    result = {"outputs": {"1": {"text": ["x"]}}, "meta": {}}
    q.task_done(item_id, result, OK)
    result["outputs"]["1"]["text"].append("changed later by the executor")
    assert q.get_history(deep=False)["a"]["outputs"] == {"1": {"text": ["x"]}}
    copied = q.get_history()
    copied["a"]["outputs"].clear()  # the default hands out copies
    assert q.get_history(prompt_id="a", deep=False)["a"]["outputs"] == {"1": {"text": ["x"]}}
