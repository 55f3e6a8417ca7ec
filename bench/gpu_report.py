"""bench/gpu.py's report: ComfyUI 0.8.0's figures and comfyd's targets from issue 7, and the
markdown tables that put a run's JSON next to them (targets are checked only on full-size runs)."""
from __future__ import annotations

# ComfyUI 0.8.0 on one H200 (issue 7): text for the table
COMFYUI_EAGER = {"sdxl_euler": "14.8–15.7 it/s; prompt 1.72–1.79 s; VAE 92 ms; peak 8.6 GiB; first 5.4–5.8 s",
                 "sdxl_3m_sde": "14.4 it/s; prompt 1.91 s",
                 "sd15_b1": "27.5–36.0 it/s; prompt 0.67–0.80 s; peak 2.6 GiB",
                 "sd15_b8": "18.6 it/s; prompt 1.78 s; peak 6.3 GiB"}
COMFYUI_COMPILED = {"sdxl_euler": "23.2 it/s; prompt 1.19 s; first 88 s", "sd15_b1": "42.1 it/s; prompt 0.58 s; first 173 s"}

# "same ratios" for dpmpp_3m_sde_gpu: ComfyUI's 14.4 it/s scaled by (SDXL euler target / ComfyUI's 15.25 midpoint)
_SDXL_MID = (14.8 + 15.7) / 2
EAGER_TARGET = {"sdxl_euler": {"its": 17.0, "peak_gib": 8.6},
                "sdxl_3m_sde": {"its": round(14.4 * 17 / _SDXL_MID, 1)},
                "sd15_b1": {"its": 40.0, "prompt_s": 0.45, "peak_gib": 2.6},
                "sd15_b8": {"its": 24.0, "peak_gib": 6.3}}
COMPILED_TARGET = {"sdxl_euler": {"its": 28.0, "first_s": 30.0, "restart_s": 5.0},
                   "sdxl_3m_sde": {"its": round(14.4 * 28 / _SDXL_MID, 1), "first_s": 30.0, "restart_s": 5.0},
                   "sd15_b1": {"its": 50.0, "first_s": 30.0, "restart_s": 5.0}}
BATCH_RATIO_TARGET = {16: 1.5}
# target key -> (label, unit, higher is better)
EAGER_KEYS = {"its": ("", " it/s", True), "prompt_s": ("prompt", " s", False), "peak_gib": ("peak", " GiB", False)}
COMPILED_KEYS = {"its": ("", " it/s", True), "first_s": ("first", " s", False),
                 "restart_s": ("after restart", " s", False)}


def fmt(s: dict | None, unit: str = "", scale: float = 1.0, digits: int = 2) -> str:
    """A spread {median, min, max, n} as 'median (min–max)'."""
    if not s:
        return "n/a"
    med, lo, hi = s["median"] * scale, s["min"] * scale, s["max"] * scale
    return f"{med:.{digits}f}{unit} ({lo:.{digits}f}–{hi:.{digits}f})" if s["n"] > 1 else f"{med:.{digits}f}{unit}"


def _check(value, limit, higher_is_better: bool, judge: bool) -> str:
    if not judge or value is None or limit is None:
        return ""
    ok = value >= limit if higher_is_better else value <= limit
    return " ✓" if ok else " ✗"


def _secs(x) -> str:
    return "—" if x is None else f"{x:.2f} s"


def _target_text(t: dict, keys: dict) -> str:
    parts = [f"{label} {'≥' if hi else '≤'} {t[k]:g}{unit}".strip() for k, (label, unit, hi) in keys.items() if k in t]
    return "; ".join(parts) or "—"


def _peak(r: dict) -> str:
    smi = r.get("peak_process_gib") or r.get("peak_device_used_gib")
    return f"{fmt(smi, ' GiB')} / {fmt(r.get('peak_reserved_gib'), ' GiB')}"


def eager_table(summary: dict, judge: bool) -> list[str]:
    rows = ["| work | it/s | prompt | VAE decode | peak VRAM (nvidia-smi / torch reserved) | model load | first prompt "
            "| ComfyUI 0.8.0 eager (H200) | target |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in summary["eager"].get("workloads", {}).items():
        t = EAGER_TARGET.get(name, {})
        if "error" in r:
            rows.append(f"| {r['label']} | error: {r['error'][:80]} | | | | | | {COMFYUI_EAGER.get(name, '—')} | |")
            continue
        first = r.get("first") or {}
        peak_med = ((r.get("peak_process_gib") or r.get("peak_device_used_gib") or {}).get("median"))
        rows.append(
            f"| {r['label']} | {fmt(r['its'])}{_check((r['its'] or {}).get('median'), t.get('its'), True, judge)} "
            f"| {fmt(r['prompt_s'], ' s')}{_check((r['prompt_s'] or {}).get('median'), t.get('prompt_s'), False, judge)} "
            f"| {fmt(r['vae_s'], ' ms', 1000, 0)} | {_peak(r)}{_check(peak_med, t.get('peak_gib'), False, judge)} "
            f"| {_secs(first.get('load_s')) if first.get('cold_load') else '—'} | {_secs(first.get('prompt_s'))} "
            f"| {COMFYUI_EAGER.get(name, '—')} "
            f"| {_target_text(t, EAGER_KEYS)} |")
    return rows


def compiled_table(summary: dict, judge: bool) -> list[str]:
    part = summary.get("compiled") or {}
    restart = part.get("restart", {})
    rows = ["| work | it/s | prompt | first compiled prompt (sampler) | first prompt after restart (sampler) "
            "| ComfyUI 0.8.0 + TorchCompileModel (H200) | target |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in part.get("workloads", {}).items():
        t = COMPILED_TARGET.get(name, {})
        if "error" in r:
            rows.append(f"| {r['label']} | error: {r['error'][:80]} | | | | {COMFYUI_COMPILED.get(name, '—')} | |")
            continue
        first = r.get("first") or {}
        again = (restart.get(name) or {}).get("first") or {}

        def first_text(f, limit):
            if not f:
                return "—"
            return (f"{f['prompt_s']:.2f} s ({_secs(f.get('sampler_s'))})"
                    f"{_check(f['prompt_s'], limit, False, judge)}")
        rows.append(
            f"| {r['label']} | {fmt(r['its'])}{_check((r['its'] or {}).get('median'), t.get('its'), True, judge)} "
            f"| {fmt(r['prompt_s'], ' s')} | {first_text(first, t.get('first_s'))} "
            f"| {first_text(again, t.get('restart_s'))} | {COMFYUI_COMPILED.get(name, '—')} "
            f"| {_target_text(t, COMPILED_KEYS)} |")
    return rows


def batch_table(summary: dict, judge: bool) -> list[str]:
    part = summary.get("batch_prompts") or {}
    rows = ["| queued prompts | plain server images/s | `--batch-prompts` images/s | ratio | target |",
            "| --- | --- | --- | --- | --- |"]
    for n, r in part.get("by_n", {}).items():
        limit = BATCH_RATIO_TARGET.get(int(n))
        ratio = r.get("ratio")
        rows.append(f"| {n} | {fmt(r.get('plain'))} | {fmt(r.get('batched'))} "
                    f"| {'n/a' if ratio is None else f'{ratio:.2f}×'}{_check(ratio, limit, True, judge)} "
                    f"| {'≥ %g×' % limit if limit else '—'} |")
    return rows


def render(summary: dict) -> str:
    judge = not summary["tiny"] and summary.get("device") not in (None, "cpu")  # targets are for a GPU
    runs, steps = summary["runs"], summary["steps"]
    out = [f"### comfyd on {summary.get('device', '?')} (torch {summary.get('torch', '?')}; {steps} steps, cfg 7, "
           f"{runs} runs: median (min–max){'; tiny CPU smoke run, targets not judged' if summary['tiny'] else ''})", ""]
    if summary.get("eager", {}).get("workloads"):
        out += ["#### eager (default flags: " + " ".join(summary["eager"].get("server_flags", [])) + ")", ""]
        out += eager_table(summary, judge) + [""]
    if (summary.get("compiled") or {}).get("workloads"):
        out += ["#### compiled (" + " ".join(summary["compiled"].get("server_flags", [])) + ")", ""]
        out += compiled_table(summary, judge) + [""]
        for key, when in (("compile_log", "first server"), ("restart_compile_log", "after restart")):
            log = summary["compiled"].get(key)
            if log:
                out += [f"comfyd's compile log ({when}): " + "; ".join(f"{c['what']} {c['seconds']:.1f} s" for c in log),
                        ""]
    if (summary.get("batch_prompts") or {}).get("by_n"):
        bp = summary["batch_prompts"]
        out += [f"#### queued prompts, {bp.get('label', '')}: plain vs `--batch-prompts` ({bp.get('runs')} rounds each)",
                ""]
        out += batch_table(summary, judge) + [""]
    written = summary.get("checkpoint_write_s", {})
    facts = [f"checkpoints written in {', '.join(f'{k} {v:.0f} s' for k, v in written.items())}"]
    if summary.get("eager", {}).get("system_stats_max_s") is not None:
        worst_ms = summary["eager"]["system_stats_max_s"] * 1000
        facts.append(f"slowest GET /system_stats during eager prompts {worst_ms:.0f} ms")
    facts.append(f"whole benchmark {summary.get('total_s', 0):.0f} s (budget {summary.get('budget_s') or '∞'} s)")
    out.append("; ".join(facts))
    for note in summary.get("notes", []):
        out.append(f"- note: {note}")
    return "\n".join(out)
