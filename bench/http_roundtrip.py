"""HTTP latency a client sees: GET /object_info, and POST /prompt -> result in /history.

Starts `python -m server` on a free port (CPU, temp base directory) and, over one
keep-alive connection as a browser or script would hold,
  1. times GET /object_info (the whole body read) N times;
  2. times a trivial image workflow (EmptyImage 64x64 -> ImageInvert -> SaveImage, a new
     colour each run so nothing is cached) from POST /prompt until its outputs are in
     history, two ways: woken by the WebSocket's completion message (`executing` with
     node null) then one GET /history/{id}, and by polling GET /history/{id} every 2 ms.
Prints a table (median, spread) and writes JSON to bench/results/http_roundtrip.json.

    python bench/http_roundtrip.py [--runs 50] [--warmup 5]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import websocket  # websocket-client, a test extra

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """One keep-alive HTTP connection."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def json(self, method: str, path: str, body: dict | None = None):
        status, raw = self.request(method, path, body)
        if status != 200:
            raise RuntimeError(f"{method} {path} -> {status}: {raw[:300]!r}")
        return json.loads(raw)


def workflow(color: int) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench_rt"}}}


def wait_done_ws(ws: websocket.WebSocket, prompt_id: str) -> None:
    while True:
        frame = ws.recv()
        if isinstance(frame, bytes):
            continue  # previews
        msg = json.loads(frame)
        data = msg.get("data") or {}
        if data.get("prompt_id") != prompt_id:
            continue
        if msg["type"] == "executing" and data.get("node") is None:
            return
        if msg["type"] in ("execution_error", "execution_interrupted"):
            raise RuntimeError(f"prompt failed: {msg}")


def round_trip_ws(client: Client, ws, client_id: str, color: int) -> float:
    start = time.perf_counter()
    prompt_id = client.json("POST", "/prompt", {"prompt": workflow(color), "client_id": client_id})["prompt_id"]
    wait_done_ws(ws, prompt_id)
    entry = client.json("GET", f"/history/{prompt_id}")[prompt_id]
    elapsed = time.perf_counter() - start
    assert entry["outputs"]["3"]["images"], entry
    return elapsed


def round_trip_poll(client: Client, color: int) -> float:
    start = time.perf_counter()
    prompt_id = client.json("POST", "/prompt", {"prompt": workflow(color)})["prompt_id"]
    while True:
        history = client.json("GET", f"/history/{prompt_id}")
        if prompt_id in history and history[prompt_id]["status"]["completed"]:
            break
        time.sleep(0.002)
    elapsed = time.perf_counter() - start
    assert history[prompt_id]["outputs"]["3"]["images"], history
    return elapsed


def stats_ms(seconds: list[float]) -> dict:
    ms = sorted(s * 1000 for s in seconds)
    q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) >= 2 else [ms[0]] * 9
    return {"n": len(ms), "median": statistics.median(ms), "p10": q[0], "p90": q[8], "min": ms[0], "max": ms[-1],
            "stdev": statistics.stdev(ms) if len(ms) > 1 else 0.0}


def start_server(port: int, base: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "server", "--base-directory", base, "--port", str(port), "--cpu",
                             "--dont-print-server", "--verbose", "WARNING"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            Client(port).json("GET", "/system_stats")
            return proc
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("server did not start within 60 s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "http_roundtrip.json"))
    a = ap.parse_args()
    port = free_port()
    base = tempfile.mkdtemp(prefix="comfyd-bench-")
    proc = start_server(port, base)
    try:
        client = Client(port)
        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws?clientId={client_id}", timeout=60)
        color = 1
        for _ in range(a.warmup):  # first requests import lazily and build caches
            client.request("GET", "/object_info")
            round_trip_ws(client, ws, client_id, color)
            color += 1
        info_times, info_bytes = [], 0
        for _ in range(a.runs):
            start = time.perf_counter()
            status, raw = client.request("GET", "/object_info")
            info_times.append(time.perf_counter() - start)
            assert status == 200
            info_bytes = len(raw)
        ws_times, poll_times = [], []
        for _ in range(a.runs):
            ws_times.append(round_trip_ws(client, ws, client_id, color))
            poll_times.append(round_trip_poll(client, color + 1))
            color += 2
        ws.close()
    finally:
        proc.terminate()
        proc.wait()
    node_count = len(json.loads(raw))
    result = {
        "object_info_ms": stats_ms(info_times), "object_info_bytes": info_bytes, "object_info_nodes": node_count,
        "prompt_to_history_ws_ms": stats_ms(ws_times), "prompt_to_history_poll_ms": stats_ms(poll_times),
        "workflow": "EmptyImage 64x64 -> ImageInvert -> SaveImage, new colour each run",
        "host": {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()},
    }
    print(f"{'measure (ms)':40s} {'median':>8s} {'p10':>8s} {'p90':>8s} {'min':>8s} {'max':>8s}")
    for label, key in ((f"GET /object_info ({node_count} nodes, {info_bytes // 1024} KiB)", "object_info_ms"),
                       ("POST /prompt -> history (WebSocket)", "prompt_to_history_ws_ms"),
                       ("POST /prompt -> history (poll 2 ms)", "prompt_to_history_poll_ms")):
        s = result[key]
        print(f"{label:40s} {s['median']:8.2f} {s['p10']:8.2f} {s['p90']:8.2f} {s['min']:8.2f} {s['max']:8.2f}")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
