"""Leak check: many tiny text-to-image prompts through a real comfyd process, watching its
memory.

Writes a tiny SD1 checkpoint (real key layout) into a temp base directory, starts
`python -m server` (CPU unless --gpu), runs N prompts (default 1000) that each re-run the
text encoder, the sampler and the VAE (seed and text change every prompt), and samples the
server's RSS (and, on CUDA, the GPU memory nvidia-smi charges to it plus PyTorch's reserved
memory from /system_stats) every `--every` prompts. History is capped (--max-history 50) so
stored results do not count as growth. Prints a table and the growth after warm-up, writes
JSON to bench/results/leak_check.json.

    python bench/leak_check.py [--prompts 1000] [--every 50] [--gpu] [--size 64]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from comfyd_proc import ComfydProcess  # noqa: E402

MB = 1024 * 1024


def graph(i: int, size: int) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": f"a red cat number {i}", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                  "latent_image": ["4", 0], "seed": i, "steps": 2, "cfg": 7.0,
                                                  "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }


def sample(srv: ComfydProcess, done: int, started: float) -> dict:
    dev = srv.device_stats()
    row = {"prompts": done, "seconds": round(time.perf_counter() - started, 1), "rss_mb": srv.rss_bytes() / MB}
    if dev["type"] == "cuda":
        row["torch_reserved_mb"] = dev["torch_vram_total"] / MB
        gpu = srv.gpu_process_bytes()
        row["gpu_process_mb"] = None if gpu is None else gpu / MB
    return row


def slope_per_1000(rows: list[dict], key: str) -> float | None:
    pts = [(r["prompts"], r[key]) for r in rows if r.get(key) is not None]
    if len(pts) < 3:
        return None
    xs, ys = zip(*pts)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 1000 * sum((x - mx) * (y - my) for x, y in pts) / den if den else None


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=1000)
    p.add_argument("--every", type=int, default=None, help="sample memory every K prompts (default N/20)")
    p.add_argument("--window", type=int, default=10, help="prompts kept queued at once")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--gpu", action="store_true", help="run on the GPU (default: --cpu)")
    p.add_argument("--server-args", default="", help="extra comfyd flags")
    p.add_argument("--out", default=os.path.join(HERE, "results", "leak_check.json"))
    a = p.parse_args(argv)
    every = a.every or max(1, a.prompts // 20)

    from tests.tiny_checkpoints import write_tiny_checkpoint
    base = tempfile.mkdtemp(prefix="comfyd_leak_")
    ckpts = os.path.join(base, "models", "checkpoints")
    os.makedirs(ckpts)
    write_tiny_checkpoint(os.path.join(ckpts, "tiny_sd1.safetensors"), "sd1", seed=3)
    flags = ([] if a.gpu else ["--cpu"]) + ["--max-history", "50", "--preview-method", "none"] + a.server_args.split()

    rows = []
    with ComfydProcess(base, flags) as srv:
        srv.run_prompt(graph(10 ** 9, a.size))  # loads the model: the baseline is taken after it
        started = time.perf_counter()
        rows.append(sample(srv, 0, started))
        pending, done, queued = [], 0, 0
        while done < a.prompts:
            while queued < a.prompts and len(pending) < a.window:
                pending.append(srv.queue_prompt(graph(queued, a.size)))
                queued += 1
            run = pending.pop(0)
            if not run.done.wait(600):
                raise RuntimeError("a prompt did not finish:\n" + srv.log_tail())
            if run.error:
                raise RuntimeError(f"prompt failed: {run.error}\n{srv.log_tail()}")
            srv.runs.pop(run.prompt_id, None)
            done += 1
            if done % every == 0 or done == a.prompts:
                rows.append(sample(srv, done, started))
                print(f"{done:6d} prompts  {rows[-1]['seconds']:7.1f} s  RSS {rows[-1]['rss_mb']:8.1f} MB"
                      + (f"  reserved {rows[-1]['torch_reserved_mb']:8.1f} MB" if "torch_reserved_mb" in rows[-1] else ""),
                      flush=True)
        elapsed = time.perf_counter() - started

    warm = [r for r in rows if r["prompts"] >= a.prompts * 0.2]  # allocator and caches settle first
    summary = {"prompts": a.prompts, "seconds": round(elapsed, 1), "prompts_per_s": round(a.prompts / elapsed, 2),
               "rss_start_mb": round(rows[0]["rss_mb"], 1), "rss_end_mb": round(rows[-1]["rss_mb"], 1),
               "rss_max_mb": round(max(r["rss_mb"] for r in rows), 1),
               "rss_growth_after_warmup_mb": round(warm[-1]["rss_mb"] - warm[0]["rss_mb"], 1),
               "rss_slope_mb_per_1000_after_warmup": slope_per_1000(warm, "rss_mb"),
               "device": "cuda" if a.gpu else "cpu", "samples": rows}
    if a.gpu:
        summary["torch_reserved_growth_after_warmup_mb"] = round(
            (warm[-1].get("torch_reserved_mb") or 0) - (warm[0].get("torch_reserved_mb") or 0), 1)
        summary["gpu_process_slope_mb_per_1000_after_warmup"] = slope_per_1000(warm, "gpu_process_mb")
    print("\n| prompts | s | RSS MB |" + (" reserved MB | GPU process MB |" if a.gpu else ""))
    print("| --- | --- | --- |" + (" --- | --- |" if a.gpu else ""))
    for r in rows:
        line = f"| {r['prompts']} | {r['seconds']} | {r['rss_mb']:.1f} |"
        if a.gpu:
            line += f" {r.get('torch_reserved_mb', 0):.1f} | {r.get('gpu_process_mb') or 0:.1f} |"
        print(line)
    print(json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=1))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":
    main()
