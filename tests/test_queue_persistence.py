"""The queue and history survive restarts, including a SIGKILL while a prompt runs."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from executor.queue import ExecutionStatus, PromptQueue
from executor.store import SqliteStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SLOW_PACK = '''
import time
from models.progress import check_interrupted

class SlowEcho:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seconds": ("FLOAT", {"default": 1.0}), "tag": ("STRING", {"default": ""})}}
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, seconds, tag):
        end = time.time() + seconds
        while time.time() < end:
            check_interrupted()
            time.sleep(0.02)
        return {"ui": {"text": [tag]}}

NODE_CLASS_MAPPINGS = {"SlowEcho": SlowEcho}
'''


def job(n, pid):
    return (n, pid, {"1": {"class_type": "X", "inputs": {}}}, {"client_id": "c", "create_time": 1}, ["1"], {"k": "v"})


def test_store_roundtrip_and_interrupted_job(tmp_path):
    path = str(tmp_path / "q.sqlite3")
    q = PromptQueue(store=SqliteStore(path))
    for i, pid in enumerate(["a", "b", "c"]):
        q.put(job(q.next_number(), pid))
    item, item_id = q.get()
    q.task_done(item_id, {"outputs": {"1": {"text": ["x"]}}, "meta": {}}, ExecutionStatus("success", True, []))
    q.get()  # "b" is now running and the process "dies"
    q2 = PromptQueue(store=SqliteStore(path))
    running, pending = q2.get_current_queue()
    assert running == [] and [p[1] for p in pending] == ["c"]
    assert pending[0][3] == {"client_id": "c", "create_time": 1}
    hist = q2.get_history()
    assert list(hist) == ["a", "b"]
    assert hist["a"]["outputs"] == {"1": {"text": ["x"]}}
    assert hist["b"]["status"]["status_str"] == "error" and hist["b"]["status"]["completed"] is False
    assert q2.next_number() == 3  # the counter continues
    again = PromptQueue(store=SqliteStore(path))
    assert list(again.get_history()) == ["a", "b"] and len(again.get_current_queue()[1]) == 1


def test_history_limit_is_kept_on_disk(tmp_path):
    path = str(tmp_path / "q.sqlite3")
    q = PromptQueue(store=SqliteStore(path), max_history=2)
    for pid in "abc":
        q.put(job(q.next_number(), pid))
        item, item_id = q.get()
        q.task_done(item_id, {"outputs": {}, "meta": {}}, ExecutionStatus("success", True, []))
    assert list(q.get_history()) == ["b", "c"]
    assert list(PromptQueue(store=SqliteStore(path), max_history=2).get_history()) == ["b", "c"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(base, port):
    return subprocess.Popen([sys.executable, "-m", "server", "--base-directory", str(base), "--port", str(port),
                             "--cpu", "--dont-print-server"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.loads(r.read())


def _wait_up(port, proc, seconds=40):
    for _ in range(seconds * 10):
        if proc.poll() is not None:
            raise RuntimeError("server exited")
        try:
            return _get(port, "/system_stats")
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def _post(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/prompt", data=json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_sigkill_with_running_and_pending_prompts(tmp_path):
    (tmp_path / "custom_nodes").mkdir()
    (tmp_path / "custom_nodes" / "slow_pack.py").write_text(SLOW_PACK)
    port = _free_port()
    proc = _start(tmp_path, port)
    try:
        _wait_up(port, proc)
        ids = []
        for i, seconds in enumerate([30.0, 0.1, 0.2, 0.3]):
            prompt = {"1": {"class_type": "SlowEcho", "inputs": {"seconds": seconds, "tag": f"t{i}"}}}
            ids.append(_post(port, {"prompt": prompt})["prompt_id"])
        for _ in range(100):
            if _get(port, "/queue")["queue_running"]:
                break
            time.sleep(0.1)
        assert _get(port, "/queue")["queue_running"][0][1] == ids[0]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    proc = _start(tmp_path, port)
    try:
        _wait_up(port, proc)
        for _ in range(200):
            q = _get(port, "/queue")
            if not q["queue_running"] and not q["queue_pending"]:
                break
            time.sleep(0.1)
        history = _get(port, "/history")
        assert sorted(history) == sorted(ids)  # none lost, none duplicated
        assert history[ids[0]]["status"]["status_str"] == "error"
        assert history[ids[0]]["status"]["messages"][0][0] == "execution_interrupted"
        for i, pid in enumerate(ids[1:], start=1):
            assert history[pid]["status"]["status_str"] == "success"
            assert history[pid]["outputs"]["1"] == {"text": [f"t{i}"]}
    finally:
        proc.terminate()
        proc.wait()
