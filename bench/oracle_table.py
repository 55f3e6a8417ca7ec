"""Same seed, same image as ComfyUI 0.8.0: the oracle cases over HTTP, as a markdown table.

    .venv/bin/python bench/oracle_table.py                      # SD1.5 cases on a server it starts
    .venv/bin/python bench/oracle_table.py --sdxl               # + g_sdxl_euler (needs >= 12 GB free)
    .venv/bin/python bench/oracle_table.py --server http://127.0.0.1:8188 --cases a_sd15_euler

Without --server it makes the oracle model files (../shared/oracle/make_ckpt.py, cached in
$COMFYD_ORACLE_CACHE or <tmp>/oracle_models), starts `python -m server --cpu` on a free port
with a temporary base directory whose models/ folders link to them, runs each case through
the oracle's compare.py (its own upload, /prompt, /history, /view and thresholds), and prints
one row per case: sampler, latent rel_rms, image PSNR, comfyd's wall time and ComfyUI's.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORACLE_DIR = next(p for p in (os.environ.get("COMFYD_ORACLE_DIR") or "", os.path.join(os.path.dirname(ROOT), "shared", "oracle"),
                               os.path.join(ROOT, "tests", "oracle_data")) if p and os.path.isdir(p))
REFS = os.path.join(ORACLE_DIR, "refs")
SD15_CASES = ["a_sd15_euler", "b_sd15_dpmpp_2m_karras", "c_sd15_dpmpp_3m_sde_gpu_karras", "d_sd15_img2img",
              "e_sd15_lora", "f_sd15_controlnet", "i_sd15_prompt_weighting"]
SDXL_CASE = "g_sdxl_euler"
SDXL_MIN_FREE_BYTES = 12 << 30
MODEL_KEYS = ("ckpt_name", "control_net_name", "clip_name", "lora_name")


def compare_module():
    """The oracle's compare.py, imported from its file (it is not a package)."""
    spec = importlib.util.spec_from_file_location("oracle_compare", os.path.join(ORACLE_DIR, "compare.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def case_prompt(case: str) -> dict:
    with open(os.path.join(REFS, case, "prompt.json")) as f:
        return json.load(f)


def models_needed(cases) -> list[str]:
    names = set()
    for case in cases:
        for node in case_prompt(case).values():
            names.update(v for k, v in node["inputs"].items() if k in MODEL_KEYS and isinstance(v, str))
    return sorted(names)


def sampler_of(case: str) -> str:
    for node in case_prompt(case).values():
        if node["class_type"] in ("KSampler", "KSamplerAdvanced"):
            i = node["inputs"]
            text = f"{i['sampler_name']}/{i['scheduler']}, {i['steps']} steps"
            return text + (f", denoise {i['denoise']}" if i.get("denoise", 1.0) != 1.0 else "")
    return "-"


def link_models(base_dir: str, paths: dict[str, str]) -> None:
    """models/<folder>/<name> -> the cached file, for every {name: path} (folder from models.json)."""
    with open(os.path.join(ORACLE_DIR, "models.json")) as f:
        manifest = json.load(f)
    for name, path in paths.items():
        folder = os.path.join(base_dir, "models", manifest[name]["folder"])
        os.makedirs(folder, exist_ok=True)
        link = os.path.join(folder, name)
        if not os.path.lexists(link):
            os.symlink(path, link)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(base_dir: str, log_path: str | None = None, startup_s: float = 120.0):
    """`python -m server --cpu` on a free port over base_dir; yields its URL, stops it after."""
    port = free_port()
    log = open(log_path or os.path.join(base_dir, "server.log"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "server", "--cpu", "--base-directory", base_dir,
                             "--port", str(port), "--disable-auto-launch"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + startup_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}; log: {log.name}")
            try:
                with urllib.request.urlopen(url + "/system_stats", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"server did not answer within {startup_s:.0f} s; log: {log.name}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def free_models(url: str) -> None:
    """POST /free so the next case's checkpoint does not sit beside the last one in RAM."""
    req = urllib.request.Request(url + "/free", data=b'{"unload_models": true, "free_memory": true}',
                                 headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(req, timeout=30).read()


def run_cases(url: str, cases, compare=None, timeout_s: int = 1200) -> dict:
    """{case: compare.py's result dict} (verdict, why, latent_rel_rms, image_psnr_db, wall_s, ...)."""
    compare = compare or compare_module()
    opts = argparse.Namespace(refs=REFS, timeout=timeout_s, poll=0.25, save_dir=None,
                              max_latent_rel_rms=1e-4, min_psnr=60.0)
    results = {}
    for case in cases:
        try:
            results[case] = compare.run_case(url, case, opts)
        except Exception as ex:  # noqa: BLE001 - reported in the table, as compare.py does
            results[case] = {"verdict": "FAIL", "why": [f"{type(ex).__name__}: {ex}"]}
    return results


def markdown_table(results: dict) -> str:
    rows = ["| case | sampler | latent rel_rms | image PSNR (dB) | comfyd wall (s) | ComfyUI exec (s) | verdict |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for case, r in results.items():
        rel = "%.3g" % r["latent_rel_rms"] if "latent_rel_rms" in r else "-"
        psnr = "%.2f" % r["image_psnr_db"] if "image_psnr_db" in r else "-"
        wall = "%.1f" % r["wall_s"] if r.get("wall_s") is not None else "-"
        ref = "%.1f" % r["ref_exec_s"] if r.get("ref_exec_s") is not None else "-"
        verdict = r["verdict"] + (" (" + "; ".join(r["why"]) + ")" if r.get("why") else "")
        rows.append(f"| {case} | {sampler_of(case)} | {rel} | {psnr} | {wall} | {ref} | {verdict} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", help="an already running server; default: start one")
    ap.add_argument("--cases", default=",".join(SD15_CASES))
    ap.add_argument("--sdxl", action="store_true", help=f"add {SDXL_CASE} when >= 12 GB of RAM is free")
    ap.add_argument("--json", help="write the raw results here")
    a = ap.parse_args()
    cases = [c for c in a.cases.split(",") if c]
    if a.sdxl:
        import psutil
        if psutil.virtual_memory().available >= SDXL_MIN_FREE_BYTES:
            cases.append(SDXL_CASE)
        else:
            print(f"skipping {SDXL_CASE}: less than 12 GB of RAM free", file=sys.stderr)
    if a.server:
        results = run_cases(a.server.rstrip("/"), cases)
    else:
        sys.path.insert(0, ROOT)
        from tests.oracle_models import oracle_model_path
        with tempfile.TemporaryDirectory(prefix="comfyd_oracle_") as base:
            link_models(base, {n: oracle_model_path(n) for n in models_needed(cases)})
            with running_server(base) as url:
                results = {}
                for case in cases:
                    if case == SDXL_CASE:
                        free_models(url)
                    results.update(run_cases(url, [case]))
                    print(f"{case}: {results[case]['verdict']}", file=sys.stderr, flush=True)
    print(markdown_table(results))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0 if all(r["verdict"] == "PASS" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
