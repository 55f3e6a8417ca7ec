"""LoRA patch / unpatch / switch times on a full-size SDXL checkpoint, and proof that switching
LoRAs never reloads the checkpoint (issue 6's closing note).

The bench writes its own random kohya SDXL LoRAs (A and B, rank 32, alpha 32) on every weight
the SDXL LoRA key map reaches through kohya names: each transformer-block linear of the UNet
(attn1/attn2 q, k, v, out; ff proj and out), proj_in/proj_out, and every self-attention and MLP
linear of both text encoders (lora_te1_* for CLIP-L, lora_te2_* for OpenCLIP bigG).

Phases (each in a fresh subprocess, so its peak RSS is its own):
  unet   load the UNet alone (fp16 storage as in the file), then time load_lora_for_models,
         the first WeightPatcher.apply, the same LoRA again (unchanged signature), A -> B,
         and the restore to no LoRA (bit-identical weights checked on a sample).
  clip   the same for the two text encoders.
  http   a comfyd app in-process: prompts CheckpointLoaderSimple -> LoraLoader(A|B) ->
         CLIPTextEncode x2 -> KSampler (1 step, 64x64) -> SaveLatent, run A, B, A, and none;
         models.checkpoint.load_checkpoint is wrapped to count loads (must stay 1).

RAM: patched weights cost their size twice while patched (the patched copy and the original
kept for restoring). --ram-budget-gb caps that extra memory: when the full-coverage UNet LoRA
would exceed it, phase `unet` patches the largest prefix of its targets that fits and also
reports the figures scaled to full coverage (patch work is linear in the bytes patched).

    python bench/lora_patch.py [--checkpoint PATH] [--ram-budget-gb 8] [--phases unet clip http]

Without --checkpoint the oracle SDXL file (6.9 GB) is generated into the tests' cache first.
Prints a markdown table and writes bench/results/lora_patch.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "compat")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

RANK = 32
GIB = 2 ** 30
THREADS = 1  # --threads


def peak_rss_gb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def make_lora(unet_keys, clip_keys: dict, seed: int, unet_budget_bytes: float | None = None):
    """A random kohya LoRA on the UNet transformer linears / proj_in/out (LDM names, as
    sd-scripts writes SDXL LoRAs) and the text encoders' attention and MLP linears.
    unet_keys / clip_keys: {key: shape}. Returns (tensors, unet weights covered, of total)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    out = {}

    def add(name, shape):
        o, i = shape[0], shape[1] if len(shape) > 1 else 1
        out[name + ".lora_up.weight"] = (torch.randn(o, RANK, generator=g) * 0.01).half().reshape(o, RANK, *[1] * (len(shape) - 2))
        out[name + ".lora_down.weight"] = (torch.randn(RANK, i, generator=g) * 0.01).half().reshape(RANK, i, *[1] * (len(shape) - 2))
        out[name + ".alpha"] = torch.tensor(float(RANK))

    targets = sorted(k for k, s in unet_keys.items() if k.endswith(".weight") and (
        ("transformer_blocks" in k and len(s) == 2) or ".proj_in." in k or ".proj_out." in k))
    total = sum(_numel(unet_keys[k]) * 2 for k in targets)
    used = 0
    covered = 0
    for k in targets:
        size = _numel(unet_keys[k]) * 2
        if unet_budget_bytes is not None and used + size > unet_budget_bytes:
            break
        add("lora_unet_" + k[:-len(".weight")].replace(".", "_"), unet_keys[k])
        used += size
        covered += 1
    for name, keys in clip_keys.items():
        te = "lora_te1_" if name == "clip_l" else "lora_te2_"
        for k, s in sorted(keys.items()):
            if k.startswith("text_model.encoder.layers.") and k.endswith("_proj.weight") or \
                    (k.startswith("text_model.encoder.layers.") and ".mlp.fc" in k and k.endswith(".weight")):
                add(te + k[:-len(".weight")].replace(".", "_"), s)
    return out, {"unet_targets": covered, "unet_targets_total": len(targets),
                 "unet_bytes": used, "unet_bytes_total": total}


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def _sample_weights(weights, patches, n=12):
    """Copies of a few patched weights (to check the restore is bit-identical)."""
    targets = sorted(patches)[:: max(1, len(patches) // n)][:n]
    return {t: weights._param(t).detach().clone() for t in targets}


def phase_components(path: str, which: str, budget_gb: float) -> dict:
    import torch
    torch.set_num_threads(THREADS)
    from models.checkpoint import load_checkpoint
    from models.clip import build_clip
    from models.model_patcher import ModelPatcher
    from nodes.lora import load_lora_for_models

    t_load, ck = _timed(lambda: load_checkpoint(path, weight_dtype=torch.float16, output_vae=False,
                                                output_model=which == "unet", output_clip=which == "clip",
                                                text_dtype=torch.float16))
    if which == "unet":
        model, clip = ModelPatcher(ck.model), None
        unet_shapes = {k: tuple(v.shape) for k, v in ck.model.diffusion_model.state_dict().items()}
        lora_a, cover = make_lora(unet_shapes, {}, 1, budget_gb * GIB / 2)
        lora_b, _ = make_lora(unet_shapes, {}, 2, budget_gb * GIB / 2)
        holder = model
    else:
        model, clip = None, build_clip(ck.text_encoders)
        ck.text_encoders = None
        clip_shapes = {n: {k: tuple(v.shape) for k, v in m.state_dict().items()} for n, m in clip.models.items()}
        lora_a, cover = make_lora({}, clip_shapes, 1)
        lora_b, _ = make_lora({}, clip_shapes, 2)
        holder = clip
    rss_loaded = peak_rss_gb()

    t_lora_a, (ma, ca) = _timed(lambda: load_lora_for_models(model, clip, lora_a, 1.0, 1.0))
    t_lora_b, (mb, cb) = _timed(lambda: load_lora_for_models(model, clip, lora_b, 1.0, 1.0))
    pa, pb = (ma or ca), (mb or cb)
    weights = holder.weights
    targets = set().union(*(p for p, *_ in pa.weight_patches))
    before = _sample_weights(weights, targets)

    t_apply, _ = _timed(lambda: weights.apply(pa.weight_patches))
    t_again, _ = _timed(lambda: weights.apply(pa.weight_patches))  # same LoRA, same signature
    t_switch, _ = _timed(lambda: weights.apply(pb.weight_patches))
    t_same_b, _ = _timed(lambda: weights.apply(pb.weight_patches))
    t_restore, _ = _timed(lambda: weights.apply(holder.weight_patches))  # no LoRA: restore only
    restored = all(torch.equal(weights._param(t), w) for t, w in before.items())
    n_patched = len(targets)
    return {"phase": which, "checkpoint_load_s": t_load, "load_lora_for_models_s": (t_lora_a + t_lora_b) / 2,
            "first_apply_s": t_apply, "same_lora_again_s": t_again, "switch_a_to_b_s": t_switch,
            "same_lora_again_b_s": t_same_b, "restore_s": t_restore, "restored_bit_identical": restored,
            "patched_weights": n_patched, "lora_tensors": len(lora_a), "rss_after_load_gb": rss_loaded,
            "peak_rss_gb": peak_rss_gb(), **cover}


def file_shapes(path: str):
    """({UNet key: shape}, {encoder: {HF key: shape}}) read from the file's header and shapes."""
    import torch

    from models.checkpoint import openclip_to_hf
    from models.detect import detect_checkpoint
    from models.state_dict import open_state_dict
    with open_state_dict(path) as src:
        det = detect_checkpoint(src)
        shapes = {k: tuple(src.get(k).shape) for k in src.keys()}
    unet = {k[len(det.unet_prefix):]: v for k, v in shapes.items() if k.startswith(det.unet_prefix)}
    clip = {}
    for name, (prefix, layout) in det.text_encoders.items():
        part = {k[len(prefix):]: torch.empty(v, device="meta") for k, v in shapes.items() if k.startswith(prefix)}
        part = openclip_to_hf(part) if layout == "openclip" else part
        clip[name] = {k: tuple(v.shape) for k, v in part.items()}
    return unet, clip


def phase_http(path: str, budget_gb: float) -> dict:
    """Two LoRAs through LoraLoader between prompts over HTTP; checkpoint loads counted."""
    import asyncio

    import torch
    torch.set_num_threads(THREADS)
    from safetensors.torch import save_file

    import models.checkpoint
    import nodes.checkpoint_loaders
    base = tempfile.mkdtemp(prefix="lora_bench_")
    for d in ("input", "output", "temp", "user", "models/checkpoints", "models/loras"):
        os.makedirs(os.path.join(base, d))
    os.symlink(path, os.path.join(base, "models/checkpoints/sdxl.safetensors"))
    unet_shapes, clip_shapes = file_shapes(path)
    te_bytes = sum(_numel(s) * 2 for keys_ in clip_shapes.values() for s in keys_.values())
    unet_budget = max(0.0, budget_gb * GIB / 2 - te_bytes)
    cover = {}
    for name, seed in (("A", 1), ("B", 2)):
        lora, cover = make_lora(unet_shapes, clip_shapes, seed, unet_budget)
        save_file(lora, os.path.join(base, "models/loras", f"{name}.safetensors"))
        del lora

    loads = []
    real_load = nodes.checkpoint_loaders.load_checkpoint

    def counting_load(*a, **kw):
        loads.append(time.perf_counter())
        return real_load(*a, **kw)
    nodes.checkpoint_loaders.load_checkpoint = counting_load
    models.checkpoint.load_checkpoint = counting_load  # anyone importing it later

    def prompt(lora):
        model, clip = (["2", 0], ["2", 1]) if lora else (["1", 0], ["1", 1])
        p = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl.safetensors"}},
             "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": clip}},
             "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": clip}},
             "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
             "6": {"class_type": "KSampler", "inputs": {"model": model, "positive": ["3", 0], "negative": ["4", 0],
                                                       "latent_image": ["5", 0], "seed": 1, "steps": 1, "cfg": 7.0,
                                                       "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
             "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "bench"}}}
        if lora:
            p["2"] = {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                                                            "lora_name": f"{lora}.safetensors",
                                                            "strength_model": 1.0, "strength_clip": 1.0}}
        return p

    async def run_all():
        from aiohttp.test_utils import TestClient, TestServer

        from server import cli
        from server.app import create_app
        from wsclient import run_prompt
        app = create_app(cli.parse_args(["--base-directory", base, "--cpu"]))
        client = TestClient(TestServer(app))
        await client.start_server()
        rows = []
        try:
            for lora in ("A", "B", "A", None):
                t0 = time.perf_counter()
                _, events, hist = await run_prompt(client, prompt(lora), timeout=900)
                ok = hist is not None and hist["status"]["status_str"] == "success"
                rows.append({"lora": lora or "none", "prompt_s": time.perf_counter() - t0, "ok": ok,
                             "checkpoint_loads_so_far": len(loads),
                             "error": None if ok else [d for t, d in events if t == "execution_error"][:1]})
        finally:
            await client.close()
        return rows

    try:
        rows = asyncio.run(run_all())
    finally:
        shutil.rmtree(base, ignore_errors=True)  # the checkpoint is only linked in there
    return {"phase": "http", "prompts": rows, "checkpoint_loads": len(loads), "peak_rss_gb": peak_rss_gb(), **cover}


def child(args) -> None:
    global THREADS
    THREADS = args.threads
    if args.phase == "http":
        out = phase_http(args.checkpoint, args.ram_budget_gb)
    else:
        out = phase_components(args.checkpoint, args.phase, args.ram_budget_gb)
    print("RESULT " + json.dumps(out))


def table(results: dict) -> str:
    lines = ["| measurement | UNet | text encoders (TE1+TE2) |", "| --- | --- | --- |"]
    u, c = results.get("unet", {}), results.get("clip", {})

    def f(d, k, unit="s", scale=False):
        if k not in d:
            return "-"
        v = d[k]
        if isinstance(v, bool):
            return "yes" if v else "NO"
        text = f"{v * 1000:.1f} ms" if unit == "s" and v < 1 else (f"{v:.2f} s" if unit == "s" else f"{v:.2f} {unit}")
        if scale and d.get("unet_bytes") and d["unet_bytes"] < d.get("unet_bytes_total", 0):
            full = v * d["unet_bytes_total"] / d["unet_bytes"]
            text += f" (≈{full:.2f} s at full coverage)"
        return text
    rows = [("checkpoint part load (mmap, fp16)", "checkpoint_load_s", "s", False),
            ("load_lora_for_models (key map + adapters)", "load_lora_for_models_s", "s", False),
            ("first patch apply (WeightPatcher.apply)", "first_apply_s", "s", True),
            ("same LoRA again (signature unchanged)", "same_lora_again_s", "s", False),
            ("switch LoRA A -> B (restore + apply)", "switch_a_to_b_s", "s", True),
            ("unpatch / restore to no LoRA", "restore_s", "s", True),
            ("restored weights bit-identical", "restored_bit_identical", "", False),
            ("peak RSS (incl. mmapped file pages)", "peak_rss_gb", "GB", False)]
    for label, key, unit, scale in rows:
        lines.append(f"| {label} | {f(u, key, unit, scale)} | {f(c, key, unit)} |")
    if u:
        lines.append(f"| weights patched | {u['patched_weights']} of the LoRA-covered "
                     f"{u['unet_targets_total']} ({u['unet_bytes'] / GIB:.2f} of {u['unet_bytes_total'] / GIB:.2f} GiB fp16) "
                     f"| {c.get('patched_weights', '-')} |")
    h = results.get("http")
    if h:
        lines += ["", "| HTTP prompt (CheckpointLoaderSimple -> LoraLoader -> KSampler 1 step) | time | ok | checkpoint loads so far |",
                  "| --- | --- | --- | --- |"]
        for r in h["prompts"]:
            lines.append(f"| LoRA {r['lora']} | {r['prompt_s']:.1f} s | {'yes' if r['ok'] else r['error']} | {r['checkpoint_loads_so_far']} |")
        lines.append(f"\ncheckpoint loads over the four prompts: **{h['checkpoint_loads']}**; HTTP-phase peak RSS "
                     f"{h['peak_rss_gb']:.1f} GB; its LoRAs cover both text encoders and "
                     f"{h['unet_targets']} of {h['unet_targets_total']} UNet targets")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint")
    ap.add_argument("--ram-budget-gb", type=float, default=8.0,
                    help="cap on the extra memory patched weights may take (patched copy + original)")
    ap.add_argument("--phases", nargs="+", default=["unet", "clip", "http"], choices=["unet", "clip", "http"])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest on a shared 2-core machine)")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.checkpoint is None:
        from oracle_models import oracle_model_path
        args.checkpoint = oracle_model_path("oracle_sdxl_s2.safetensors")
    if args.phase:
        return child(args)
    results = {}
    for phase in args.phases:
        proc = subprocess.run([sys.executable, __file__, "--phase", phase, "--checkpoint", args.checkpoint,
                               "--ram-budget-gb", str(args.ram_budget_gb), "--threads", str(args.threads)],
                              capture_output=True, text=True)
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not found:
            print(f"phase {phase} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results[phase] = json.loads(found[-1][len("RESULT "):])
        print(f"{phase}: {json.dumps(results[phase])}", file=sys.stderr)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    out_path = os.path.join(ROOT, "bench", "results", "lora_patch.json")
    if os.path.exists(out_path):  # phases run separately accumulate
        with open(out_path) as f:
            results = {**json.load(f).get("results", {}), **results}
    print(table(results))
    with open(out_path, "w") as f:
        json.dump({"checkpoint": args.checkpoint, "ram_budget_gb": args.ram_budget_gb, "threads": args.threads,
                   "load_average": os.getloadavg(), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
