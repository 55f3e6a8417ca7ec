"""Per-forward overhead of comfyd's UNet against ComfyUI 0.8.0's, on the CPU.

At SD1.5 512² batch 1 on a big GPU the card mostly waits for the host: a step costs about
what its kernel launches and its Python module calls cost. Both are counted here, on the
CPU, with tiny-width but full-depth UNets in the real key layouts (tests/tiny_checkpoints.py:
the block structure of SD1.5 / SDXL, channels / 10), fp32, one thread, batch 2 (cond and
uncond), a small latent:

- aten ops dispatched per forward (a TorchDispatchMode counter, also per op name): each is
  at least one kernel launch on a GPU;
- nn.Module forward calls per forward, and Python function calls (sys.setprofile);
- median wall time per forward;
- the two outputs on the same weights (relative difference), which shows the comparison is
  of the same network.

ComfyUI's UNetModel comes from a snapshot of its source (default /tmp/comfyui-ref, made from
the bare mirror with `git archive` when missing) with its own `comfy` package, never
comfyd's compat/ one; its layers are comfy.ops.disable_weight_init (its default when the
weights already have the compute dtype) and its attention is the PyTorch SDPA path it uses
on CUDA (--use-pytorch-cross-attention). comfyd runs with fused QKV on, as on CUDA.

    python bench/unet_overhead.py [--repeats 30] [--latent 16] [--ref /tmp/comfyui-ref]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# comfyd's packages are imported before ComfyUI's snapshot joins sys.path (both have `models`)
from models import attention as comfyd_attention  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402
from tests.tiny_checkpoints import write_tiny_checkpoint  # noqa: E402

MIRROR = "/work/.mirror/pollockjj+ComfyUI/repo"
RESULT = os.path.join(ROOT, "bench", "results", "unet_overhead.json")

# ComfyUI's UNet configurations (comfy/model_detection.py's SD15 / SDXL dicts and
# comfy/supported_models.py), at the tiny widths of tests/tiny_checkpoints.py
TINY_MC = 32
COMFYUI_CONFIGS = {
    "sd1": dict(image_size=32, in_channels=4, out_channels=4, model_channels=TINY_MC, num_res_blocks=[2, 2, 2, 2],
                channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
                transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], use_linear_in_transformer=False,
                context_dim=48, num_heads=8, num_head_channels=-1, adm_in_channels=None,
                use_spatial_transformer=True, legacy=False, use_checkpoint=False,
                use_temporal_attention=False, use_temporal_resblock=False),
    "sdxl": dict(image_size=32, in_channels=4, out_channels=4, model_channels=TINY_MC, num_res_blocks=[2, 2, 2],
                 channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], use_linear_in_transformer=True,
                 context_dim=48 + 80, num_head_channels=64, num_heads=-1, adm_in_channels=80 + 2816 - 1280,
                 num_classes="sequential", use_spatial_transformer=True, legacy=False, use_checkpoint=False,
                 use_temporal_attention=False, use_temporal_resblock=False),
}


_COMFYUI = {}


def import_comfyui(ref: str):
    """ComfyUI's openaimodel module and ops from the snapshot at `ref` (imported once)."""
    if ref in _COMFYUI:
        return _COMFYUI[ref]
    if not os.path.isdir(os.path.join(ref, "comfy")):
        os.makedirs(ref, exist_ok=True)
        archive = subprocess.run(["git", "--git-dir", MIRROR, "archive", "HEAD"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", ref], input=archive, check=True)
    compat = os.path.join(ROOT, "compat")
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != compat]
    if "comfy" in sys.modules:
        raise RuntimeError("a `comfy` package is already imported; ComfyUI's must be the one used")
    sys.path.insert(0, ref)
    argv, sys.argv = sys.argv, ["main.py", "--cpu", "--use-pytorch-cross-attention"]
    try:
        import comfy.options
        comfy.options.enable_args_parsing()
        import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
        import comfy.ops
    finally:
        sys.argv = argv
    if not os.path.abspath(comfy.ops.__file__).startswith(os.path.abspath(ref)):
        raise RuntimeError(f"imported {comfy.ops.__file__}, not ComfyUI's snapshot at {ref}")
    _COMFYUI[ref] = openaimodel, comfy.ops
    return _COMFYUI[ref]


def build_models(family: str, ref: str, fused_qkv: bool):
    tmp = tempfile.mkdtemp(prefix="unet_overhead_")
    path = write_tiny_checkpoint(os.path.join(tmp, f"{family}.safetensors"), family, seed=0, dtype=torch.float32)
    ckpt = load_checkpoint(path, compute_dtype=torch.float32, output_vae=False, output_clip=False)
    comfyd = ckpt.model
    if fused_qkv:
        comfyd_attention.set_fused_qkv({"cpu", "cuda"})
    openaimodel, ops = import_comfyui(ref)
    ref_unet = openaimodel.UNetModel(**COMFYUI_CONFIGS[family], dtype=torch.float32, device="cpu",
                                     operations=ops.disable_weight_init)
    sd = {k: v.clone() for k, v in comfyd.diffusion_model.state_dict().items()}
    ref_unet.load_state_dict(sd, strict=True)  # same keys, same shapes: the same network
    ref_unet.eval().requires_grad_(False)
    return comfyd, ref_unet


def inputs(family: str, latent: int):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, latent, latent, generator=g)
    t = torch.tensor([999.0, 999.0])
    ctx_dim = COMFYUI_CONFIGS[family]["context_dim"]
    context = torch.randn(2, 77, ctx_dim, generator=g)
    kw = {"context": context}
    if COMFYUI_CONFIGS[family].get("adm_in_channels"):
        kw["y"] = torch.randn(2, COMFYUI_CONFIGS[family]["adm_in_channels"], generator=g)
    return x, t, kw


# allocations and aliases: no kernel of their own
_NOT_KERNELS = {"empty", "empty_strided", "empty_like", "_unsafe_view", "alias", "lift_fresh"}


class OpCounter(TorchDispatchMode):
    """Counts the aten ops reaching the Python dispatch key. Under inference_mode these are the
    ops as called (composites such as linear or contiguous included); under no_grad the
    composites are decomposed first, so what is left, less the views, are kernel launches."""

    def __init__(self, kernels_only=False):
        super().__init__()
        self.kernels_only = kernels_only
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self.kernels_only or not (func.is_view or name in _NOT_KERNELS):
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def count(fn) -> dict:
    """aten ops, module forward calls and Python calls of one call of fn."""
    modules = collections.Counter()

    def pre(module, args):
        modules[type(module).__name__] += 1

    handle = torch.nn.modules.module.register_module_forward_pre_hook(pre)
    try:
        with OpCounter() as counter:
            fn()
    finally:
        handle.remove()
    with torch.inference_mode(False), torch.no_grad(), OpCounter(kernels_only=True) as kernels:
        fn()
    calls = collections.Counter()

    def profile(frame, event, arg):
        if event in ("call", "c_call"):
            calls[event] += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return {"aten_ops": sum(counter.ops.values()), "ops_by_name": dict(counter.ops.most_common()),
            "kernels": sum(kernels.ops.values()), "kernels_by_name": dict(kernels.ops.most_common()),
            "module_calls": sum(modules.values()), "modules_by_type": dict(modules.most_common()),
            "python_calls": calls["call"], "c_calls": calls["c_call"]}


def timed(fn, repeats: int) -> dict:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"ms_median": statistics.median(times), "ms_min": times[0],
            "ms_p25": times[len(times) // 4], "ms_p75": times[(3 * len(times)) // 4]}


def measure(family: str, args) -> dict:
    comfyd, ref_unet = build_models(family, args.ref, not args.no_fused_qkv)
    x, t, kw = inputs(family, args.latent)
    runners = {
        "comfyd": lambda: comfyd.diffusion_model(x, t, transformer_options={}, **kw),
        "comfyui": lambda: ref_unet(x, t, transformer_options={}, **kw),
    }
    sigma = comfyd.model_sampling.sigma(t)
    runners["comfyd_apply_model"] = lambda: comfyd.apply_model(
        x, sigma, c_crossattn=kw["context"], transformer_options={}, **{k: v for k, v in kw.items() if k == "y"})
    out = {}
    with torch.inference_mode():
        a = runners["comfyd"]().float()
        b = runners["comfyui"]().float()
        out["max_abs_diff"] = (a - b).abs().max().item()
        out["rel_diff"] = out["max_abs_diff"] / max(b.abs().max().item(), 1e-12)
        out["outputs_equal"] = out["rel_diff"] <= 1e-5
        for name, fn in runners.items():
            out[name] = count(fn)
            out[name].update(timed(fn, args.repeats))
    return out


def table(results: dict) -> str:
    rows = [f"{'model':<6} {'impl':<19} {'aten ops':>9} {'kernels':>8} {'modules':>8} {'py calls':>9} {'ms/fwd':>8}  {'(p25-p75)':>13}"]
    for family, r in results.items():
        for impl in ("comfyd", "comfyui", "comfyd_apply_model"):
            m = r[impl]
            rows.append(f"{family:<6} {impl:<19} {m['aten_ops']:>9} {m['kernels']:>8} {m['module_calls']:>8} {m['python_calls']:>9} "
                        f"{m['ms_median']:>8.2f}  ({m['ms_p25']:.2f}-{m['ms_p75']:.2f})")
        rows.append(f"{family:<6} comfyd vs ComfyUI: max |diff| {r['max_abs_diff']:.2e}, relative {r['rel_diff']:.2e}"
                    f" -> {'equal' if r['outputs_equal'] else 'DIFFERENT'}")
        a, b = r["comfyd"]["ops_by_name"], r["comfyui"]["ops_by_name"]
        diffs = sorted(((a.get(k, 0) - b.get(k, 0), k) for k in set(a) | set(b)), key=lambda d: -abs(d[0]))
        rows.append("       ops comfyd - ComfyUI: " + ", ".join(f"{k} {d:+d}" for d, k in diffs if d)[:400])
        a, b = r["comfyd"]["kernels_by_name"], r["comfyui"]["kernels_by_name"]
        diffs = sorted(((a.get(k, 0) - b.get(k, 0), k) for k in set(a) | set(b)), key=lambda d: -abs(d[0]))
        rows.append("       kernels comfyd - ComfyUI: " + ", ".join(f"{k} {d:+d}" for d, k in diffs if d)[:400])
    return "\n".join(rows)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--latent", type=int, default=16, help="latent side (16 = a 128² image)")
    p.add_argument("--families", default="sd1,sdxl")
    p.add_argument("--ref", default="/tmp/comfyui-ref", help="ComfyUI 0.8.0 source tree")
    p.add_argument("--no-fused-qkv", action="store_true", help="comfyd's three q/k/v matmuls (its CPU default)")
    p.add_argument("--json", default=RESULT)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    results = {f: measure(f, args) for f in args.families.split(",")}
    print(table(results))
    report = {"torch": torch.__version__, "latent": args.latent, "batch": 2, "dtype": "float32", "threads": 1,
              "fused_qkv": not args.no_fused_qkv, "results": results}
    if args.json:
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
