"""A comfyd server in a child process for the benchmarks: start it on a free port, talk HTTP,
record its /ws events with arrival times, sample its RSS and the GPU memory it holds.

    with ComfydProcess(base_dir, ["--cpu"]) as srv:
        run = srv.run_prompt(graph)          # PromptRun: events with perf_counter times
        srv.rss_bytes(), srv.gpu_process_bytes()
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PromptRun:
    prompt_id: str
    posted: float
    events: list = field(default_factory=list)  # (perf_counter time, type, data)
    done: threading.Event = field(default_factory=threading.Event)

    def time_of(self, kind: str, pred=lambda d: True) -> float | None:
        return next((t for t, k, d in self.events if k == kind and pred(d)), None)

    @property
    def finished(self) -> float | None:
        return self.time_of("executing", lambda d: d.get("node") is None)

    @property
    def error(self):
        return next((d for _, k, d in self.events if k in ("execution_error", "execution_interrupted")), None)

    def node_seconds(self, node: str) -> float | None:
        """From `executing node` to the next executing event (the node's own run time)."""
        marks = [(t, d.get("node")) for t, k, d in self.events if k == "executing"]
        for i, (t, n) in enumerate(marks):
            if n == node and i + 1 < len(marks):
                return marks[i + 1][0] - t
        return None

    def steps_per_second(self, node: str) -> float | None:
        """Steady-state it/s of a sampler node from its progress events (first step excluded)."""
        ticks = [(t, d["value"]) for t, k, d in self.events if k == "progress" and d.get("node") == node]
        if len(ticks) < 2:
            return None
        (t0, v0), (t1, v1) = ticks[0], ticks[-1]
        return (v1 - v0) / (t1 - t0) if t1 > t0 else None


class ComfydProcess:
    def __init__(self, base_dir: str, flags: list[str] = (), log_path: str | None = None,
                 env: dict | None = None):
        self.base_dir = base_dir
        self.env = env  # extra environment variables for the server (e.g. compile cache folders)
        self.port = free_port()
        self.flags = list(flags)
        self.log_path = log_path or os.path.join(base_dir, "comfyd.log")
        self.client_id = uuid.uuid4().hex
        self.runs: dict[str, PromptRun] = {}
        self.proc: subprocess.Popen | None = None
        self._ws = None
        self.started = self.ready = None

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self, timeout: float = 180.0) -> float:
        """Start and wait until it answers; returns the seconds it took."""
        self._log = open(self.log_path, "ab")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "server", "--port", str(self.port), "--base-directory",
                                      self.base_dir, "--dont-print-server", *self.flags],
                                     cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.env} if self.env else None)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"comfyd exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.call("/system_stats")
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"comfyd did not answer within {timeout} s:\n{self.log_tail()}")
        self.ready = time.perf_counter()
        self._connect_ws()
        return self.ready - self.started

    def stop(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:
                pass
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def log_tail(self, n: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    # -- HTTP and /ws ----------------------------------------------------------------------------
    def call(self, path: str, body=None, timeout: float = 60):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return json.loads(raw) if raw else None

    def _connect_ws(self) -> None:
        import websocket  # websocket-client
        self._ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}",
                                               timeout=None)
        threading.Thread(target=self._read_ws, daemon=True).start()

    def _read_ws(self) -> None:
        while True:
            try:
                msg = self._ws.recv()
            except Exception:
                return
            now = time.perf_counter()
            if not isinstance(msg, str):
                continue  # binary previews
            if not msg:
                return  # closed
            try:
                m = json.loads(msg)
            except ValueError:
                continue
            data = m.get("data") or {}
            run = self.runs.get(data.get("prompt_id")) if isinstance(data, dict) else None
            if run is None:
                continue
            run.events.append((now, m["type"], data))
            if m["type"] == "executing" and data.get("node") is None:
                run.done.set()
            elif m["type"] in ("execution_error", "execution_interrupted"):
                run.done.set()

    def queue_prompt(self, graph: dict) -> PromptRun:
        prompt_id = uuid.uuid4().hex
        run = self.runs[prompt_id] = PromptRun(prompt_id, time.perf_counter())
        self.call("/prompt", {"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id})
        return run

    def run_prompt(self, graph: dict, timeout: float = 600) -> PromptRun:
        return self.wait(self.queue_prompt(graph), timeout)

    def wait(self, run: PromptRun, timeout: float = 600) -> PromptRun:
        """Wait for a queued prompt to finish; a failure or a timeout raises with the log's tail."""
        if not run.done.wait(timeout):
            raise RuntimeError(f"prompt did not finish in {timeout:.0f} s:\n{self.log_tail()}")
        if run.error:
            raise RuntimeError(f"prompt failed: {run.error.get('exception_message', run.error)}\n{self.log_tail()}")
        return run

    def free(self, unload_models=True, free_memory=True) -> None:
        self.call("/free", {"unload_models": unload_models, "free_memory": free_memory})
        time.sleep(1.5)  # the worker handles the flags between jobs (its queue wait is 1 s)

    # -- memory --------------------------------------------------------------------------------
    def rss_bytes(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss

    def device_stats(self) -> dict:
        return self.call("/system_stats")["devices"][0]

    def gpu_process_bytes(self) -> int | None:
        """GPU memory nvidia-smi charges to the server process (None without nvidia-smi, or while
        nvidia-smi does not list it: before CUDA starts, or in a container that hides other pids)."""
        for line in _nvidia_smi("--query-compute-apps=pid,used_memory"):
            if len(line) == 2 and line[0] == str(self.proc.pid):
                return int(line[1]) * 1024 * 1024
        return None

    @staticmethod
    def gpu_used_bytes() -> int | None:
        """Memory in use on GPU 0 as nvidia-smi reports it, all processes together."""
        rows = _nvidia_smi("--query-gpu=memory.used")
        return int(rows[0][0]) * 1024 * 1024 if rows and rows[0][0].isdigit() else None


def _nvidia_smi(query: str) -> list[list[str]]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [[p.strip() for p in line.split(",")] for line in out.splitlines() if line.strip()]


class PeakSampler:
    """Polls a reading in a thread (e.g. the server's GPU memory) and keeps the maximum."""

    def __init__(self, read, interval: float = 0.1):
        self.read, self.interval = read, interval
        self.peak = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            try:
                v = self.read()
            except Exception:
                v = None
            if v is not None:
                self.peak = v if self.peak is None else max(self.peak, v)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
