"""Sampler overhead per step beyond the model calls, on the CPU.

Runs the full KSampler pipeline (conditioning, CFG batching, sampler arithmetic, callback)
with a model whose apply_model costs almost nothing, so the time per step is comfyd's own
overhead. Prints a table (median and spread over repeats) and writes JSON.

    python bench/sampler_overhead.py [--steps 20] [--repeats 7] [--size 128]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.latent_formats import SD15  # noqa: E402
from models.sampling import ksampler  # noqa: E402
from models.sampling.conds import CondCrossAttn  # noqa: E402
from models.sampling.model_sampling import DiscreteSchedule  # noqa: E402

SAMPLERS = ["euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde_gpu", "uni_pc", "lms",
            "ddim", "sa_solver"]


class NullModel:
    """apply_model returns its input scaled: one cheap elementwise op per call."""

    def __init__(self):
        self.model_sampling = DiscreteSchedule()
        self.latent_format = SD15()
        self.calls = 0

    def extra_conds(self, cross_attn=None, **kwargs):
        return {"c_crossattn": CondCrossAttn(cross_attn)}

    def apply_model(self, x, sigma, **kwargs):
        self.calls += 1
        return x * 0.5


class Patcher:
    def __init__(self):
        self.model = NullModel()
        self.model_options = {}
        self.load_device = torch.device("cpu")


def run(sampler: str, steps: int, size: int) -> tuple[float, int]:
    p = Patcher()
    latent = torch.zeros(1, 4, size // 8, size // 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    pos = [[torch.zeros(1, 77, 768), {}]]
    neg = [[torch.zeros(1, 77, 768), {}]]
    t0 = time.perf_counter()
    ksampler.sample(p, noise, steps, 7.0, sampler, "karras", pos, neg, latent, seed=0,
                    callback=lambda i, x0, x, total: None)
    return time.perf_counter() - t0, p.model.calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "sampler_overhead.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    print(f"{'sampler':20s} {'model calls':>11s} {'ms/step median':>15s} {'min':>7s} {'max':>7s}")
    for name in SAMPLERS:
        run(name, 3, a.size)  # warm-up
        times, calls = [], 0
        for _ in range(a.repeats):
            t, calls = run(name, a.steps, a.size)
            times.append(t * 1000 / a.steps)
        row = {"sampler": name, "steps": a.steps, "size": a.size, "model_calls": calls,
               "ms_per_step_median": statistics.median(times), "ms_per_step_min": min(times),
               "ms_per_step_max": max(times)}
        rows.append(row)
        print(f"{name:20s} {calls:11d} {row['ms_per_step_median']:15.3f} {min(times):7.3f} {max(times):7.3f}")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"torch": torch.__version__, "threads": 1, "rows": rows}, f, indent=1)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
