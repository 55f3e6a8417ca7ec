"""Throughput of the queue and the executor's overhead per node, over HTTP.

Starts `python -m server` on a free port (CPU, temp base directory), then
  1. queues N trivial 3-node prompts (EmptyImage -> ImageInvert -> PreviewImage at 8x8, each
     with another colour so nothing is cached) and times until all are in history;
  2. runs chains of K ImageInvert nodes and fits the time per extra node.
Prints a table and writes JSON to bench/results/queue_throughput.json.

    python bench/queue_throughput.py [--prompts 200] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data), timeout=30) as r:
        return json.loads(r.read() or b"null")


def trivial(color: int) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}


def chain(length: int, color: int) -> dict:
    g = {"0": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}}}
    for i in range(1, length + 1):
        g[str(i)] = {"class_type": "ImageInvert", "inputs": {"image": [str(i - 1), 0]}}
    g["out"] = {"class_type": "PreviewImage", "inputs": {"images": [str(length), 0]}}
    return g


def wait_empty(port):
    while True:
        q = call(port, "/queue")
        if not q["queue_running"] and not q["queue_pending"]:
            return
        time.sleep(0.005)


def run_batch(port, prompts) -> float:
    start = time.perf_counter()
    for p in prompts:
        call(port, "/prompt", {"prompt": p})
    wait_empty(port)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "queue_throughput.json"))
    a = ap.parse_args()
    port = free_port()
    base = tempfile.mkdtemp(prefix="comfyd-bench-")
    proc = subprocess.Popen([sys.executable, "-m", "server", "--base-directory", base, "--port", str(port), "--cpu",
                             "--dont-print-server", "--verbose", "WARNING"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                call(port, "/system_stats")
                break
            except OSError:
                time.sleep(0.1)
        color = 1
        rates = []
        for _ in range(a.repeats):
            prompts = [trivial(color + i) for i in range(a.prompts)]
            color += a.prompts
            rates.append(a.prompts / run_batch(port, prompts))
        per_node = []
        for _ in range(a.repeats):
            times = {}
            for length in (1, 41):
                prompts = [chain(length, color + i) for i in range(20)]
                color += 20
                times[length] = run_batch(port, prompts) / 20
            per_node.append((times[41] - times[1]) / 40 * 1000)
    finally:
        proc.terminate()
        proc.wait()
    result = {"prompts_per_second_median": statistics.median(rates), "prompts_per_second": rates,
              "ms_per_extra_node_median": statistics.median(per_node), "ms_per_extra_node": per_node,
              "prompt": "EmptyImage(8x8) -> ImageInvert -> PreviewImage, posted one by one over HTTP"}
    print(f"{'measure':32s} {'median':>10s} {'min':>10s} {'max':>10s}")
    print(f"{'prompts/second (3-node graph)':32s} {result['prompts_per_second_median']:10.1f} {min(rates):10.1f} {max(rates):10.1f}")
    print(f"{'executor ms per extra node':32s} {result['ms_per_extra_node_median']:10.2f} {min(per_node):10.2f} {max(per_node):10.2f}")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
