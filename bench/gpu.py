"""GPU speed of comfyd on the issue-7 workloads, end to end over HTTP, in one command.

Builds random full-size SD1.5 and SDXL checkpoints in the real layouts (the oracle's
make_ckpt.py: nothing is downloaded), starts `python -m server`, and measures per workload
(20 steps, cfg 7): steady-state it/s (from the sampler's /ws progress events, first step
excluded), prompt time (POST /prompt -> the prompt's `executing null`), VAE decode time (the
VAEDecode node), model load time and first-prompt time (the first prompt on a cold
checkpoint), peak GPU memory (nvidia-smi for the server process, and PyTorch's reserved
memory polled from /system_stats, whose worst latency during the runs is reported too).

    workloads: SDXL 1024² b1 euler/normal; SDXL 1024² b1 dpmpp_3m_sde_gpu/karras;
               SD1.5 512² b1 euler/normal; SD1.5 512² b8 euler/normal
    --runs 3 (medians and min-max spread), a markdown table next to ComfyUI 0.8.0's figures,
    JSON in bench/results/gpu_speed.json (or --out).

On a GPU machine (about 3-5 minutes, most of it writing the 7 GB SDXL file once):
    python bench/gpu_speed.py [--runs 3] [--server-args "--highvram"] [--workdir /tmp/comfyd_gpu]
The device machine has only the repository: copy the oracle's generator into the working tree
first (untracked files travel), e.g. `mkdir -p bench/_oracle && cp -r /work/shared/oracle/make_ckpt.py
/work/shared/oracle/layouts bench/_oracle/`, or pass --oracle-dir.
On the CPU (smoke test, tiny checkpoints in the real layouts, 2 steps, small images):
    python bench/gpu_speed.py --tiny
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from comfyd_proc import ComfydProcess, PeakSampler  # noqa: E402

GiB = 1024 ** 3

# ComfyUI 0.8.0 eager on one H200 (issue 7), for the table
COMFYUI = {"sdxl_euler": "14.8–15.7 it/s; prompt 1.72–1.79 s; VAE 92 ms; peak 8.6 GiB; first 5.4–5.8 s",
           "sdxl_3m_sde": "14.4 it/s; prompt 1.91 s",
           "sd15_b1": "27.5–36.0 it/s; prompt 0.67–0.80 s; peak 2.6 GiB",
           "sd15_b8": "18.6 it/s; prompt 1.78 s; peak 6.3 GiB"}
TARGET = {"sdxl_euler": "≥ 17 it/s", "sdxl_3m_sde": "same ratio", "sd15_b1": "≥ 40 it/s; prompt ≤ 0.45 s",
          "sd15_b8": "≥ 24 it/s"}


@dataclass
class Workload:
    name: str
    ckpt: str        # "sdxl" or "sd15"
    size: int
    batch: int
    sampler: str
    scheduler: str


FULL = [Workload("sdxl_euler", "sdxl", 1024, 1, "euler", "normal"),
        Workload("sdxl_3m_sde", "sdxl", 1024, 1, "dpmpp_3m_sde_gpu", "karras"),
        Workload("sd15_b1", "sd15", 512, 1, "euler", "normal"),
        Workload("sd15_b8", "sd15", 512, 8, "euler", "normal")]


def graph(w: Workload, seed: int, steps: int) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": f"{w.ckpt}.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photograph of an astronaut riding a horse",
                                                         "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, low quality", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": w.size, "height": w.size, "batch_size": w.batch}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                  "latent_image": ["4", 0], "seed": seed, "steps": steps, "cfg": 7.0,
                                                  "sampler_name": w.sampler, "scheduler": w.scheduler,
                                                  "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }


# -- checkpoints ------------------------------------------------------------------------------

def find_oracle(explicit: str | None) -> str:
    for d in (explicit, os.environ.get("COMFYD_ORACLE_DIR"), os.path.join(ROOT, "..", "shared", "oracle"),
              os.path.join(HERE, "_oracle"), "/work/shared/oracle"):
        if d and os.path.isfile(os.path.join(d, "make_ckpt.py")) and os.path.isdir(os.path.join(d, "layouts")):
            return os.path.abspath(d)
    raise SystemExit("make_ckpt.py and layouts/ not found: pass --oracle-dir or copy them to bench/_oracle/")


def make_checkpoints(ckpt_dir: str, tiny: bool, oracle: str | None) -> dict:
    """{name: seconds to write} (0 when the file was already there)."""
    os.makedirs(ckpt_dir, exist_ok=True)
    times = {}
    if tiny:
        os.environ.setdefault("COMFYD_ORACLE_DIR", find_oracle(oracle))
        from tests.tiny_checkpoints import write_tiny_checkpoint
        for name, family, seed in (("sd15", "sd1", 1), ("sdxl", "sdxl", 2)):
            t = time.perf_counter()
            write_tiny_checkpoint(os.path.join(ckpt_dir, f"{name}.safetensors"), family, seed=seed)
            times[name] = time.perf_counter() - t
        return times
    tool = os.path.join(find_oracle(oracle), "make_ckpt.py")

    def make(name, seed):
        out = os.path.join(ckpt_dir, f"{name}.safetensors")
        if os.path.exists(out):
            return name, 0.0
        t = time.perf_counter()
        subprocess.run([sys.executable, tool, "--arch", name, "--seed", str(seed), "--out", out + ".tmp"], check=True,
                       stdout=subprocess.DEVNULL)
        os.replace(out + ".tmp", out)
        return name, time.perf_counter() - t
    with ThreadPoolExecutor(2) as pool:  # both files at once (CPU-bound random fill, then disk)
        for name, secs in pool.map(lambda a: make(*a), (("sdxl", 1), ("sd15", 2))):
            times[name] = secs
    return times


# -- measuring ----------------------------------------------------------------------------------

def measure(srv: ComfydProcess, w: Workload, seed: int, steps: int) -> dict:
    stats_latency = []

    def reserved():
        t = time.perf_counter()
        dev = srv.device_stats()
        stats_latency.append(time.perf_counter() - t)
        return dev["torch_vram_total"] if dev["type"] == "cuda" else None

    with PeakSampler(srv.gpu_process_bytes, 0.1) as smi, PeakSampler(reserved, 0.1) as torch_peak:
        run = srv.run_prompt(graph(w, seed, steps))
    return {"prompt_s": run.finished - run.posted, "its": run.steps_per_second("5"),
            "vae_s": run.node_seconds("6"), "load_s": run.node_seconds("1"),
            "peak_process_bytes": smi.peak, "peak_reserved_bytes": torch_peak.peak,
            "system_stats_max_s": max(stats_latency) if stats_latency else None}


def spread(values) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt(s: dict | None, unit: str = "", scale: float = 1.0, digits: int = 2) -> str:
    if s is None:
        return "n/a"
    med, lo, hi = s["median"] * scale, s["min"] * scale, s["max"] * scale
    return f"{med:.{digits}f}{unit} ({lo:.{digits}f}–{hi:.{digits}f})" if s["n"] > 1 else f"{med:.{digits}f}{unit}"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny checkpoints, 2 steps, small images")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="default 20 (2 with --tiny)")
    p.add_argument("--only", default="", help="comma list of workloads (default: all)")
    p.add_argument("--server-args", default="", help="extra comfyd flags, e.g. '--highvram' or '--compile'")
    p.add_argument("--workdir", default=None, help="base directory (checkpoints are reused when present)")
    p.add_argument("--oracle-dir", default=None, help="folder with make_ckpt.py and layouts/")
    p.add_argument("--out", default=os.path.join(HERE, "results", "gpu_speed.json"))
    a = p.parse_args(argv)
    steps = a.steps or (2 if a.tiny else 20)
    workloads = FULL
    if a.tiny:
        workloads = [Workload(w.name, w.ckpt, 64, w.batch, w.sampler, w.scheduler) for w in FULL]
    if a.only:
        workloads = [w for w in workloads if w.name in a.only.split(",")]
    workdir = a.workdir or os.path.join("/tmp", "comfyd_gpu_bench_tiny" if a.tiny else "comfyd_gpu_bench")
    bench_start = time.perf_counter()
    made = make_checkpoints(os.path.join(workdir, "models", "checkpoints"), a.tiny, a.oracle_dir)
    flags = (["--cpu"] if a.tiny else []) + ["--preview-method", "none"] + a.server_args.split()

    results, seed = {}, 1000
    with ComfydProcess(workdir, flags) as srv:
        startup_s = srv.ready - srv.started
        device = srv.device_stats()
        print(f"comfyd up in {startup_s:.1f} s on {device['name']}", flush=True)
        current = None
        for w in workloads:
            first = None
            if w.ckpt != current:
                if current is not None:
                    srv.free()  # the next checkpoint loads cold, like the first
                current = w.ckpt
                seed += 1
                first = measure(srv, w, seed, steps)
                first["since_server_start_s"] = time.perf_counter() - srv.ready
            else:
                seed += 1
                measure(srv, w, seed, steps)  # warm-up of this sampler / shape
            runs = []
            for _ in range(a.runs):
                seed += 1
                runs.append(measure(srv, w, seed, steps))
            results[w.name] = {
                "workload": w.__dict__, "first": first, "runs": runs,
                "its": spread(r["its"] for r in runs), "prompt_s": spread(r["prompt_s"] for r in runs),
                "vae_s": spread(r["vae_s"] for r in runs),
                "peak_process_gib": spread((r["peak_process_bytes"] or 0) / GiB for r in runs
                                           if r["peak_process_bytes"] is not None),
                "peak_reserved_gib": spread((r["peak_reserved_bytes"] or 0) / GiB for r in runs
                                            if r["peak_reserved_bytes"] is not None),
                "system_stats_max_s": max((r["system_stats_max_s"] or 0) for r in runs),
            }
            r = results[w.name]
            print(f"{w.name}: {fmt(r['its'], ' it/s')}  prompt {fmt(r['prompt_s'], ' s')}"
                  f"  VAE {fmt(r['vae_s'], ' ms', 1000, 0)}", flush=True)

    summary = {"device": device["name"], "tiny": a.tiny, "steps": steps, "runs": a.runs, "server_flags": flags,
               "checkpoint_write_s": made, "server_startup_s": startup_s,
               "total_s": time.perf_counter() - bench_start, "workloads": results}
    print(f"\n### comfyd on {device['name']} ({steps} steps, cfg 7, {a.runs} runs: median (min–max))\n")
    print("| work | it/s | prompt | VAE decode | peak VRAM (process / torch reserved) | model load | first prompt "
          "| ComfyUI 0.8.0 (H200) | target |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for w in workloads:
        r = results[w.name]
        first = r["first"]
        load = f"{first['load_s']:.2f} s" if first and first["load_s"] is not None else "—"
        first_s = f"{first['prompt_s']:.2f} s" if first else "—"
        label = f"{'SDXL' if w.ckpt == 'sdxl' else 'SD1.5'} {w.size}² b{w.batch} {w.sampler}/{w.scheduler}"
        print(f"| {label} | {fmt(r['its'])} | {fmt(r['prompt_s'], ' s')} | {fmt(r['vae_s'], ' ms', 1000, 0)} | "
              f"{fmt(r['peak_process_gib'], ' GiB')} / {fmt(r['peak_reserved_gib'], ' GiB')} | {load} | {first_s} | "
              f"{COMFYUI[w.name]} | {TARGET[w.name]} |")
    worst = max(r["system_stats_max_s"] for r in results.values())
    print(f"\nslowest GET /system_stats during the runs: {worst * 1000:.0f} ms; server start {startup_s:.1f} s; "
          f"checkpoints written in {', '.join(f'{k} {v:.0f} s' for k, v in made.items())}; "
          f"whole benchmark {summary['total_s']:.0f} s")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":
    main()
