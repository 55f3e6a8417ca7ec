"""bench/gpu.py stays alive: its --tiny CPU run (tiny checkpoints in the real layouts, real comfyd
servers over HTTP) measures every workload and the queued-prompt throughput of a plain and a
--batch-prompts server, writes them to JSON and prints the report; --budget skips what does not
fit and still writes the JSON; the compiled part (dynamo's eager backend) is the slow test."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOADS = ("sdxl_euler", "sdxl_3m_sde", "sd15_b1", "sd15_b8")


def run_bench(tmp_path, *args, timeout=600) -> tuple[dict, str]:
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu.py"), "--tiny", "--workdir",
                           str(tmp_path / "work"), "--out", str(out), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f), proc.stdout


def positive(spread) -> bool:
    return bool(spread) and spread["n"] >= 1 and spread["min"] > 0 and spread["median"] > 0


@pytest.fixture(scope="module")
def eager_and_batch(tmp_path_factory):
    return run_bench(tmp_path_factory.mktemp("gpu_bench"), "--skip", "compile,restart", "--runs", "2")


def test_tiny_run_measures_every_workload(eager_and_batch):
    summary, stdout = eager_and_batch
    assert summary["tiny"] and summary["steps"] == 2 and summary["device"] == "cpu"
    workloads = summary["eager"]["workloads"]
    assert set(workloads) == set(WORKLOADS)
    for name, r in workloads.items():
        assert "error" not in r, (name, r.get("error"))
        assert len(r["runs"]) == 2
        for key in ("its", "prompt_s", "vae_s", "sampler_s"):
            assert positive(r[key]), (name, key, r[key])
        # the prompt contains the sampling and the decode
        assert r["prompt_s"]["min"] > r["sampler_s"]["min"] * 0.5 and r["prompt_s"]["median"] > r["vae_s"]["median"]
        assert r["workload"]["size"] == 64 and r["workload"]["batch"] == (8 if name == "sd15_b8" else 1)
    # the first prompt on each checkpoint loads it cold: load and first-prompt times, and the first prompt is slower
    for name in ("sdxl_euler", "sd15_b1"):
        first = workloads[name]["first"]
        assert first["cold_load"] and first["load_s"] > 0 and first["prompt_s"] > first["load_s"]
        assert first["prompt_s"] > workloads[name]["prompt_s"]["min"]
    assert summary["eager"]["system_stats_max_s"] > 0
    assert set(summary["checkpoint_write_s"]) == {"sd15", "sdxl"}
    for name in WORKLOADS:
        label = workloads[name]["label"]
        assert f"| {label} |" in stdout, label


def test_tiny_run_measures_queued_prompt_throughput(eager_and_batch):
    summary, stdout = eager_and_batch
    bp = summary["batch_prompts"]
    assert bp["ns"] == [1, 4, 16] and set(bp["by_n"]) == {"1", "4", "16"}
    for n, row in bp["by_n"].items():
        assert positive(row["plain"]) and positive(row["batched"]), (n, row)
        assert row["ratio"] == pytest.approx(row["batched"]["median"] / row["plain"]["median"])
    assert "| 16 |" in stdout and "--batch-prompts" in stdout
    assert summary["skipped"] == {} and summary["compiled"] is None
    assert 0 < summary["total_s"] < summary["budget_s"]


def test_budget_guard_skips_parts_and_still_writes_json(tmp_path):
    summary, stdout = run_bench(tmp_path, "--budget", "0.5", timeout=120)
    assert {"eager", "batch plain server", "compile", "restart"} <= set(summary["skipped"])
    assert summary["eager"]["workloads"] == {} and summary["batch_prompts"]["by_n"] == {}
    assert any("skipped eager" in n for n in summary["notes"]) and "note: skipped eager" in stdout


def test_unknown_part_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu.py"), "--tiny", "--only", "eagre",
                           "--out", str(tmp_path / "x.json")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "unknown part" in proc.stderr and not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_tiny_compiled_and_restarted_server(tmp_path):
    summary, stdout = run_bench(tmp_path, "--only", "compile,restart", "--runs", "1", timeout=900)
    part = summary["compiled"]
    assert part["backend"] == "eager" and "--compile" in part["server_flags"]
    r = part["workloads"]["sd15_b1"]
    assert "error" not in r, r.get("error")
    assert positive(r["its"]) and positive(r["prompt_s"])
    assert r["first"]["prompt_s"] > 0 and r["first"]["sampler_s"] > 0
    again = part["restart"]["sd15_b1"]
    assert again["first"]["prompt_s"] > 0 and again["second"]["its"] > 0
    assert "#### compiled" in stdout
