"""Load time and peak RAM of a full-size checkpoint (default: the oracle's random SDXL file).

Each configuration runs in a fresh subprocess so its peak resident memory (ru_maxrss) is
its own. Measured: detection (header + shapes), the whole load (UNet + VAE built, text
encoders split into HF-layout state dicts), and two small UNet forwards. safetensors
tensors in the file's dtype stay memory-mapped (copy-on-write), so the load itself is
cheap and the pages are read on first use: the first forward includes paging the UNet in
(from the page cache when the file was read recently), the peak RSS after it is the real
resident footprint. Prints a table and writes bench/results/model_load.json.

    python bench/model_load.py [--checkpoint PATH] [--weight-dtype fp16 fp32] [--repeats 2]

Without --checkpoint the oracle SDXL file is generated into the tests' cache first
(6.9 GB, about a minute).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def measure(path: str, weight_dtype: str, threads: int) -> dict:
    """Runs in the child process."""
    import resource

    import torch
    torch.set_num_threads(threads)
    from models.checkpoint import load_checkpoint
    from models.detect import detect_checkpoint
    from models.state_dict import open_state_dict

    t0 = time.perf_counter()
    with open_state_dict(path) as src:
        det = detect_checkpoint(src)
    t_detect = time.perf_counter() - t0

    t0 = time.perf_counter()
    ck = load_checkpoint(path, weight_dtype=getattr(torch, DTYPES[weight_dtype]))
    t_load = time.perf_counter() - t0
    rss_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20

    unet = ck.model.diffusion_model
    params = sum(p.numel() for p in unet.parameters())
    x = torch.zeros(1, 4, 16, 16)
    ctx = torch.zeros(1, 77, unet.config.context_dim)
    kw = {"y": torch.zeros(1, unet.config.adm_in_channels)} if unet.config.adm_in_channels else {}
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = unet(x, torch.tensor([500.0]), ctx, **kw)
    t_forward = time.perf_counter() - t0
    assert torch.isfinite(out).all()
    t0 = time.perf_counter()
    with torch.inference_mode():
        unet(x, torch.tensor([500.0]), ctx, **kw)
    t_forward2 = time.perf_counter() - t0
    return {"checkpoint": os.path.basename(path), "file_gib": os.path.getsize(path) / 2 ** 30,
            "family": det.description, "weight_dtype": weight_dtype, "compute_dtype": "fp32",
            "detect_s": t_detect, "load_s": t_load, "peak_rss_gib_after_load": rss_after_load,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
            "unet_params": params, "text_encoders": sorted(ck.text_encoders),
            "first_forward_16x16_s": t_forward, "second_forward_16x16_s": t_forward2, "threads": threads}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint")
    ap.add_argument("--weight-dtype", nargs="+", default=["fp16"], choices=sorted(DTYPES))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs=2, metavar=("PATH", "DTYPE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(a.child[0], a.child[1], a.threads)))
        return
    path = a.checkpoint
    if path is None:
        from tests.oracle_models import oracle_model_path
        path = oracle_model_path("oracle_sdxl_s2.safetensors")
    rows = []
    for dtype in a.weight_dtype:
        for r in range(a.repeats):
            out = subprocess.run([sys.executable, __file__, "--child", path, dtype, "--threads", str(a.threads)],
                                 check=True, capture_output=True, text=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["repeat"] = r
            rows.append(row)
            print(f"{row['checkpoint']}  weights {dtype}  detect {row['detect_s']:.2f} s  load {row['load_s']:.2f} s  "
                  f"peak RSS {row['peak_rss_gib_after_load']:.2f} GiB after load, {row['peak_rss_gib']:.2f} GiB "
                  f"incl. 16x16 forwards (first {row['first_forward_16x16_s']:.2f} s, second {row['second_forward_16x16_s']:.2f} s)", flush=True)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "model_load.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
