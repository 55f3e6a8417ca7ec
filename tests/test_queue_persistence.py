"""The queue and history survive a SIGKILL of `python -m server` while a prompt runs: the
running prompt is recorded as interrupted and never run again, the pending ones run after the
restart in their priority order, none lost and none duplicated."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A custom node pack: SlowEcho appends "start <tag>" / "end <tag>" to a log file, so the test
# sees exactly which prompts ran and how often, and sleeps in small steps so it can be interrupted.
SLOW_PACK = '''
import time
from models.progress import check_interrupted


class SlowEcho:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seconds": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 600.0}),
                             "tag": ("STRING", {"default": ""}), "log": ("STRING", {"default": ""})}}
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def run(self, seconds, tag, log):
        with open(log, "a") as f:
            f.write(f"start {tag}\\n")
        end = time.time() + seconds
        while time.time() < end:
            check_interrupted()
            time.sleep(0.02)
        with open(log, "a") as f:
            f.write(f"end {tag}\\n")
        return {"ui": {"text": [tag]}}


NODE_CLASS_MAPPINGS = {"SlowEcho": SlowEcho}
'''


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(base, port):
    with open(base / f"server-{time.time()}.log", "w") as err:  # the child keeps its own copy
        return subprocess.Popen([sys.executable, "-m", "server", "--base-directory", str(base), "--port", str(port),
                                 "--cpu", "--dont-print-server"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)


def _request(port, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data),
                                timeout=10) as r:
        text = r.read()
        return json.loads(text) if text else None


def _wait_up(port, proc, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            return _request(port, "/system_stats")
        except (OSError, urllib.error.URLError):
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def _wait_for(predicate, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def _prompt(tag, seconds, log):
    return {"1": {"class_type": "SlowEcho", "inputs": {"seconds": seconds, "tag": tag, "log": str(log)}}}


def _log_lines(log):
    return log.read_text().split() if log.exists() else []


@pytest.mark.slow
def test_sigkill_with_running_and_pending_prompts(tmp_path):
    (tmp_path / "custom_nodes").mkdir()
    (tmp_path / "custom_nodes" / "slow_pack.py").write_text(SLOW_PACK)
    log = tmp_path / "runs.log"
    port = _free_port()
    proc = _start(tmp_path, port)
    try:
        _wait_up(port, proc)
        long_run = _request(port, "/prompt", {"prompt": _prompt("t0", 120.0, log), "client_id": "c1"})
        _wait_for(lambda: "t0" in _log_lines(log))  # t0 is running
        queued = [_request(port, "/prompt", {"prompt": _prompt(f"t{i}", 0.05, log),
                                             "extra_data": {"api_key_comfy_org": "sk-secret", "mine": i}})
                  for i in (1, 2, 3)]
        front = _request(port, "/prompt", {"prompt": _prompt("t4", 0.05, log), "front": True})
        before = _request(port, "/queue")
        assert [x[1] for x in before["queue_running"]] == [long_run["prompt_id"]]
        assert len(before["queue_pending"]) == 4
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _log_lines(log) == ["start", "t0"]

    proc = _start(tmp_path, port)
    try:
        _wait_up(port, proc)
        _wait_for(lambda: _log_lines(log).count("end") == 4)
        _wait_for(lambda: _request(port, "/queue") == {"queue_running": [], "queue_pending": []})
        # the front prompt first, then the rest by number; t0 never started again
        starts = [tag for word, tag in zip(_log_lines(log)[::2], _log_lines(log)[1::2]) if word == "start"]
        assert starts == ["t0", "t4", "t1", "t2", "t3"]

        history = _request(port, "/history")
        ids = [long_run["prompt_id"]] + [q["prompt_id"] for q in queued] + [front["prompt_id"]]
        assert sorted(history) == sorted(ids)  # none lost, none duplicated
        assert list(history)[0] == long_run["prompt_id"]  # recorded first, at the restart
        interrupted = history[long_run["prompt_id"]]
        assert interrupted["status"]["status_str"] == "error" and interrupted["status"]["completed"] is False
        last = interrupted["status"]["messages"][-1]
        assert last[0] == "execution_interrupted" and "restarted" in last[1]["reason"]
        assert interrupted["prompt"][3]["client_id"] == "c1"
        for i, q in enumerate(queued, start=1):
            entry = history[q["prompt_id"]]
            assert entry["status"]["status_str"] == "success"
            assert entry["outputs"]["1"] == {"text": [f"t{i}"]}
            assert entry["prompt"][0] == q["number"] and entry["prompt"][3]["mine"] == i
            assert "create_time" in entry["prompt"][3]
        assert history[front["prompt_id"]]["prompt"][0] == front["number"] < 0
        assert "sk-secret" not in json.dumps(history)
        assert _request(port, f"/api/jobs/{long_run['prompt_id']}")["status"] == "failed"

        # the counter continues above every number handed out before the kill
        after = _request(port, "/prompt", {"prompt": _prompt("t5", 0.0, log)})
        assert after["number"] > max(abs(x["number"]) for x in [long_run, front] + queued)
        _wait_for(lambda: after["prompt_id"] in _request(port, "/history"))
        assert _log_lines(log).count("t0") == 1
    finally:
        proc.terminate()
        proc.wait()

    # a third start: nothing left to run, nothing re-recorded
    proc = _start(tmp_path, port)
    try:
        _wait_up(port, proc)
        assert _request(port, "/queue") == {"queue_running": [], "queue_pending": []}
        assert len(_request(port, "/history")) == 6
        assert _log_lines(log).count("start") == 6
    finally:
        proc.terminate()
        proc.wait()
