"""comfyd on a GPU, issue 7's workloads end to end over HTTP, in one command (under 5 minutes on an H100/H200).

Builds random full-size SD1.5 and SDXL checkpoints in the real layouts with the vendored oracle
generator (tests/oracle_data/make_ckpt.py + layouts/: nothing outside the repository, nothing
downloaded; both files written in parallel, the SD1.5 work starting while SDXL is still being
written), then starts `python -m server` several times:

  eager    plain server. Per workload (20 steps, cfg 7): steady-state it/s (the sampler's /ws
           progress events, first step excluded), prompt time (POST /prompt -> that prompt's
           `executing null`), VAE decode time (the VAEDecode node), model load and first-prompt
           time (the first prompt on a cold checkpoint), peak VRAM (nvidia-smi for the server
           process, and PyTorch's reserved memory polled from /system_stats).
             SDXL 1024² b1 euler/normal; SDXL 1024² b1 dpmpp_3m_sde_gpu/karras;
             SD1.5 512² b1 euler/normal; SD1.5 512² b8 euler/normal
  batch    SD1.5 512² b1 euler, N = 1, 4, 16 prompts (different seeds) queued at once: images/s on a
           plain server and on a `--batch-prompts` server, and their ratio (target ≥ 1.5× at 16). The
           plain figures are taken on the eager server between its SD1.5 and SDXL work when both
           parts run (SDXL is usually still being written then).
  compile  a `--compile` server with a fresh user directory (cold compile cache): first compiled
           prompt and steady-state it/s (default workloads: both SDXL ones and SD1.5 b1).
  restart  a second `--compile` server on the same user directory: the first prompt of each
           compiled shape (persistent compile cache: target ≤ 5 s).

Medians with their min-max spread over --runs, a markdown table next to ComfyUI 0.8.0's figures
and the issue's targets (bench/gpu_report.py), JSON in bench/results/gpu.json (or --out), written
after every part, so a run cut short still leaves its figures. --budget (default 285 s) skips
what no longer fits, with a note; --only / --skip choose parts, --workloads workloads.

On a GPU machine: bench/device_run.sh (what a session with the device tool runs, see there), or
    python bench/gpu.py [--runs 3] [--server-args=--highvram] [--workdir /tmp/comfyd_gpu_bench]
On the CPU (CI smoke run, tiny checkpoints in the real layouts, 2 steps, 64² images):
    python bench/gpu.py --tiny
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from comfyd_proc import ComfydProcess, PeakSampler  # noqa: E402
from gpu_report import render  # noqa: E402

GiB = 1024 ** 3
PARTS = ("eager", "batch", "compile", "restart")
BATCH_NS = (1, 4, 16)


@dataclass(frozen=True)
class Workload:
    name: str
    ckpt: str        # "sdxl" or "sd15"
    size: int
    batch: int
    sampler: str
    scheduler: str

    @property
    def label(self) -> str:
        return f"{'SDXL' if self.ckpt == 'sdxl' else 'SD1.5'} {self.size}² b{self.batch} {self.sampler}/{self.scheduler}"

    @property
    def shape(self) -> tuple:
        """What a compiled UNet is specialised on (the sampler is not part of it)."""
        return self.ckpt, self.size, self.batch


FULL = [Workload("sdxl_euler", "sdxl", 1024, 1, "euler", "normal"),
        Workload("sdxl_3m_sde", "sdxl", 1024, 1, "dpmpp_3m_sde_gpu", "karras"),
        Workload("sd15_b1", "sd15", 512, 1, "euler", "normal"),
        Workload("sd15_b8", "sd15", 512, 8, "euler", "normal")]
COMPILE_DEFAULT = ("sdxl_euler", "sdxl_3m_sde", "sd15_b1")  # the compiled targets; b8 costs one more compile


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
    """The generator and its layouts: --oracle-dir, $COMFYD_ORACLE_DIR, else the copy in tests/oracle_data."""
    for d in (explicit, os.environ.get("COMFYD_ORACLE_DIR"), os.path.join(ROOT, "tests", "oracle_data")):
        if d and os.path.isfile(os.path.join(d, "make_ckpt.py")) and os.path.isdir(os.path.join(d, "layouts")):
            return os.path.abspath(d)
    raise SystemExit("make_ckpt.py and layouts/ not found: pass --oracle-dir")


class Checkpoints:
    """Writes sd15/sdxl.safetensors in the background (one process each); `wait(name)` blocks until
    that file is there. Files already present are reused (they are renamed into place when complete)."""

    SEEDS = {"sdxl": 1, "sd15": 2}

    def __init__(self, ckpt_dir: str, tiny: bool, oracle: str):
        self.dir, self.tiny, self.oracle = ckpt_dir, tiny, oracle
        self.write_s: dict[str, float] = {}
        self._procs: dict[str, tuple] = {}
        os.makedirs(ckpt_dir, exist_ok=True)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, f"{name}.safetensors")

    def full_size(self, name: str) -> int:
        """The data bytes of the fp16 file make_ckpt.py writes (a smaller file, e.g. a tiny one, is rewritten)."""
        with open(os.path.join(self.oracle, "layouts", f"{name}.json")) as f:
            tensors = json.load(f)["tensors"]
        return sum(math.prod(t["shape"]) * (8 if t["dtype"] == "int64" else 2) for t in tensors.values())

    def start(self, names) -> None:
        if self.tiny:  # tiny files take a second: written here, in the tests' layouts
            os.environ["COMFYD_ORACLE_DIR"] = self.oracle
            from tests.tiny_checkpoints import write_tiny_checkpoint
            for name in names:
                t = time.perf_counter()
                if not os.path.exists(self.path(name)):
                    write_tiny_checkpoint(self.path(name), {"sd15": "sd1", "sdxl": "sdxl"}[name], seed=self.SEEDS[name])
                self.write_s[name] = time.perf_counter() - t
            return
        # each writer is one RNG stream (single-threaded); a few threads for the casts leave the
        # rest of the cores to the server measuring meanwhile
        env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
        for name in sorted(names, key=lambda n: n != "sdxl"):  # the long one first
            if os.path.exists(self.path(name)) and os.path.getsize(self.path(name)) >= self.full_size(name):
                self.write_s[name] = 0.0
                continue
            log = open(self.path(name) + ".log", "wb")
            proc = subprocess.Popen([sys.executable, os.path.join(self.oracle, "make_ckpt.py"), "--arch", name, "--seed",
                                     str(self.SEEDS[name]), "--out", self.path(name) + ".tmp"],
                                    stdout=log, stderr=subprocess.STDOUT, env=env)
            self._procs[name] = (proc, time.perf_counter(), log)

    def writing(self) -> bool:
        return any(p.poll() is None for p, _, _ in self._procs.values())

    def wait(self, name: str, timeout: float) -> None:
        if name not in self._procs:
            if not os.path.exists(self.path(name)):
                raise RuntimeError(f"checkpoint {name} was not written")
            return
        proc, started, log = self._procs[name]
        try:
            rc = proc.wait(max(1.0, timeout))
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"writing {name}.safetensors did not finish in time") from None
        log.close()
        if rc != 0:
            raise RuntimeError(f"make_ckpt.py --arch {name} failed ({rc}): see {self.path(name)}.log")
        if name not in self.write_s:
            self.write_s[name] = time.perf_counter() - started
            os.replace(self.path(name) + ".tmp", self.path(name))

    def stop(self) -> None:
        for proc, _, log in self._procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


# -- measuring ----------------------------------------------------------------------------------

class ServerStuck(RuntimeError):
    """A prompt that never finished, or a server that died: the rest of that server's work is skipped."""


def stuck(srv: ComfydProcess, error: Exception, what: str) -> None:
    """Raise ServerStuck when the error means the server can take no more work."""
    if srv.proc.poll() is not None:
        raise ServerStuck(f"comfyd exited during {what}") from None
    if "did not finish" in str(error):
        raise ServerStuck(f"comfyd hangs in {what}") from None


class Budget:
    """Wall-clock budget of the whole run (0 = none): parts and workloads that no longer fit are skipped."""

    def __init__(self, seconds: float):
        self.seconds, self.t0 = seconds, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.seconds - self.elapsed() if self.seconds else float("inf")

    def prompt_timeout(self) -> float:
        """How long one prompt may take: what is left plus a little, so a hang cannot outlive the budget by much."""
        return min(600.0, max(15.0, self.left() + 15.0))


class Bench:
    def __init__(self, a, workloads: list[Workload]):
        self.a, self.workloads = a, workloads
        self.steps = a.steps or (2 if a.tiny else 20)
        self.budget = Budget(a.budget)
        self.seed = 1000
        self.throughput_measured: set[str] = set()  # "plain" / "batched"
        self.base_flags = (["--cpu"] if a.tiny else []) + ["--preview-method", "none"] + a.server_args.split()
        self.ckpts = Checkpoints(os.path.join(a.workdir, "models", "checkpoints"), a.tiny, find_oracle(a.oracle_dir))
        self.summary = {"tiny": a.tiny, "steps": self.steps, "runs": a.runs, "budget_s": a.budget or None,
                        "workdir": a.workdir, "notes": [], "skipped": {}, "eager": {}, "compiled": None,
                        "batch_prompts": None, "checkpoint_write_s": self.ckpts.write_s}

    # -- bookkeeping -------------------------------------------------------------------------
    def note(self, text: str) -> None:
        print(f"note: {text}", flush=True)
        self.summary["notes"].append(text)

    def fits(self, need_s: float, what: str) -> bool:
        if self.budget.left() >= need_s:
            return True
        self.summary["skipped"][what] = f"{self.budget.left():.0f} s left of the budget, about {need_s:.0f} s needed"
        self.note(f"skipped {what}: {self.summary['skipped'][what]}")
        return False

    def need(self, full_s: float) -> float:
        return full_s / 20 if self.a.tiny else full_s

    def next_seed(self) -> int:
        self.seed += 1
        return self.seed

    def save(self) -> None:
        self.summary["total_s"] = self.budget.elapsed()
        os.makedirs(os.path.dirname(os.path.abspath(self.a.out)), exist_ok=True)
        with open(self.a.out + ".tmp", "w") as f:
            json.dump(self.summary, f, indent=1)
        os.replace(self.a.out + ".tmp", self.a.out)

    @contextlib.contextmanager
    def server(self, part: str, flags: list[str], user_dir: str, env: dict | None = None):
        """A started comfyd with its own user directory and log (WORKDIR/logs/PART.log), stopped on exit."""
        os.makedirs(self.a.log_dir, exist_ok=True)
        log_path = os.path.join(self.a.log_dir, f"{part}.log")
        if os.path.exists(log_path):
            os.remove(log_path)  # this run's log only
        srv = ComfydProcess(self.a.workdir, self.base_flags + ["--user-directory", user_dir] + flags,
                            log_path=log_path, env=env)
        try:
            srv.start(timeout=max(30.0, min(300.0, self.budget.left())))
            dev = srv.call("/system_stats")
            self.summary.setdefault("device", dev["devices"][0]["name"])
            self.summary.setdefault("torch", dev["system"].get("pytorch_version"))
            print(f"[{self.budget.elapsed():5.0f} s] {part}: comfyd {' '.join(flags)} up in "
                  f"{srv.ready - srv.started:.1f} s on {dev['devices'][0]['name']}", flush=True)
            yield srv
        finally:
            srv.stop()

    # -- one prompt -----------------------------------------------------------------------------
    def measure(self, srv: ComfydProcess, w: Workload) -> dict:
        stats_latency = []

        def reserved():
            t = time.perf_counter()
            dev = srv.device_stats()
            stats_latency.append(time.perf_counter() - t)
            return dev["torch_vram_total"] if dev["type"] == "cuda" else None

        writing = self.ckpts.writing()
        # nvidia-smi is a process per reading: sampled less often than /system_stats (also its latency probe)
        with PeakSampler(srv.gpu_process_bytes, 0.25) as smi, PeakSampler(srv.gpu_used_bytes, 0.25) as used, \
                PeakSampler(reserved, 0.1) as torch_peak:
            run = srv.run_prompt(graph(w, self.next_seed(), self.steps), timeout=self.budget.prompt_timeout())
        out = {"prompt_s": run.finished - run.posted, "its": run.steps_per_second("5"),
               "vae_s": run.node_seconds("6"), "load_s": run.node_seconds("1"), "sampler_s": run.node_seconds("5"),
               "peak_process_bytes": smi.peak, "peak_device_used_bytes": used.peak,
               "peak_reserved_bytes": torch_peak.peak,
               "system_stats_max_s": max(stats_latency) if stats_latency else None}
        if writing:
            out["while_writing_checkpoints"] = True
        return out

    def run_workloads(self, srv: ComfydProcess, workloads: list[Workload], part: str, results: dict,
                      reserve_s: float = 0) -> None:
        """Per workload: the first prompt of a new shape (cold model or compile) or one warm-up, then --runs runs,
        into results[name]. A workload starts only while its estimate plus reserve_s (kept for later parts) is
        left. A failed prompt ends its workload; a prompt that hangs or a server that died ends the server."""
        current, shapes = None, set()
        for w in workloads:
            need = self.need(25 if w.ckpt == "sdxl" else 12) + reserve_s
            if part == "compile" and w.shape not in shapes:
                need += self.need(50)  # a compile
            if not self.fits(need, f"{part} {w.name}"):
                continue
            entry = results[w.name] = {"workload": w.__dict__, "label": w.label}
            try:
                self.ckpts.wait(w.ckpt, self.budget.left())
                if w.ckpt != current:
                    if current is not None:
                        srv.free()  # the next checkpoint loads cold, like the first
                    current = w.ckpt
                    entry["first"] = {**self.measure(srv, w), "cold_load": True,
                                      "since_server_start_s": time.perf_counter() - srv.ready}
                elif w.shape not in shapes:
                    entry["first"] = {**self.measure(srv, w), "cold_load": False}
                else:
                    entry["warmup"] = self.measure(srv, w)  # this sampler's first run
                shapes.add(w.shape)
                runs = [self.measure(srv, w) for _ in range(self.a.runs)]
            except Exception as e:  # a failed prompt ends this workload, not the benchmark
                entry["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
                self.note(f"{part} {w.name} failed: {entry['error']}")
                print(str(e)[-3000:], file=sys.stderr)
                stuck(srv, e, f"{part} {w.name}")
                continue
            entry.update(summarise_runs(runs))
            print(f"[{self.budget.elapsed():5.0f} s] {part} {w.name}: {entry['its'] and round(entry['its']['median'], 2)}"
                  f" it/s, prompt {entry['prompt_s'] and round(entry['prompt_s']['median'], 3)} s"
                  + (f", first {entry['first']['prompt_s']:.2f} s" if entry.get("first") else ""), flush=True)

    # -- parts ------------------------------------------------------------------------------------
    def eager(self) -> None:
        # SD1.5 first: it is measured while the big SDXL file is still being written, and the plain
        # server's queued-prompt throughput (the batch part's baseline) runs on it before SDXL loads
        sd15 = [w for w in self.workloads if w.ckpt == "sd15"]
        rest = [w for w in self.workloads if w.ckpt != "sd15"]
        part = self.summary["eager"] = {"server_flags": self.base_flags, "workloads": {}}
        if not self.fits(self.need(30), "eager"):
            return
        found = {}
        try:
            with self.server("eager", [], os.path.join(self.a.workdir, "user_eager")) as srv:
                part["startup_s"] = srv.ready - srv.started
                self.run_workloads(srv, sd15, "eager", found)
                if sd15 and "batch" in self.parts:
                    self.throughput(srv, "plain")
                if rest:
                    if sd15:
                        srv.free()  # SDXL loads cold, like the first checkpoint
                    self.run_workloads(srv, rest, "eager", found)
        finally:
            part["workloads"] = {w.name: found[w.name] for w in self.workloads if w.name in found}
            worst = [r["system_stats_max_s"] for r in found.values() if r.get("system_stats_max_s") is not None]
            part["system_stats_max_s"] = max(worst) if worst else None
        if any(r.get("while_writing_checkpoints") for e in found.values() for r in e.get("runs", [])):
            self.note("some SD1.5 eager runs overlapped the SDXL checkpoint write (--no-overlap to wait for it)")

    def batch_workload(self) -> Workload:
        return next((w for w in self.workloads if w.name == "sd15_b1"), None) or \
            Workload("sd15_b1", "sd15", 64 if self.a.tiny else 512, 1, "euler", "normal")

    def batch(self) -> None:
        """Queued-prompt throughput: the plain server's (unless the eager part measured it) and --batch-prompts'."""
        self.batch_part()
        for mode, flags in (("plain", []), ("batched", ["--batch-prompts"])):
            if mode in self.throughput_measured:
                continue
            if not self.fits(self.need(35), f"batch {mode} server"):
                break
            with self.server(f"batch_{mode}", flags, os.path.join(self.a.workdir, f"user_batch_{mode}")) as srv:
                self.throughput(srv, mode)
        for row in self.summary["batch_prompts"]["by_n"].values():
            if row.get("plain") and row.get("batched"):
                row["ratio"] = row["batched"]["median"] / row["plain"]["median"]

    def batch_part(self) -> dict:
        if self.summary["batch_prompts"] is None:
            self.summary["batch_prompts"] = {"label": self.batch_workload().label + f", {self.steps} steps",
                                             "runs": self.a.batch_runs, "ns": list(BATCH_NS), "by_n": {}}
        return self.summary["batch_prompts"]

    def throughput(self, srv: ComfydProcess, mode: str) -> None:
        """N = 1, 4, 16 SD1.5 prompts queued at once on this server: images/s over --batch-runs rounds."""
        base, rounds, part = self.batch_workload(), self.a.batch_runs, self.batch_part()
        self.throughput_measured.add(mode)
        self.ckpts.wait(base.ckpt, self.budget.left())
        srv.run_prompt(graph(base, self.next_seed(), self.steps), timeout=self.budget.prompt_timeout())  # loaded
        for n in BATCH_NS:
            if not self.fits(self.need(3 + 0.8 * n * rounds), f"batch {mode} N={n}"):
                break
            try:
                if mode == "batched" and n > 1 and not self.a.tiny:
                    self.queued_round(srv, base, n)  # a new UNet batch shape: its first run is a warm-up
                rates = [self.queued_round(srv, base, n) for _ in range(rounds)]
            except Exception as e:
                self.note(f"batch {mode} N={n} failed: {str(e).splitlines()[0]}")
                stuck(srv, e, f"batch {mode} N={n}")
                break
            row = part["by_n"].setdefault(str(n), {})
            row[mode] = spread(rates)
            print(f"[{self.budget.elapsed():5.0f} s] batch {mode} N={n}: {row[mode]['median']:.2f} images/s",
                  flush=True)
        part.setdefault("servers", {})[mode] = srv.flags

    def queued_round(self, srv: ComfydProcess, w: Workload, n: int) -> float:
        """n prompts posted back to back (different seeds); images per second until the last one is done."""
        t0 = time.perf_counter()
        runs = [srv.queue_prompt(graph(w, self.next_seed(), self.steps)) for _ in range(n)]
        for run in runs:
            srv.wait(run, self.budget.prompt_timeout())
        return n * w.batch / (max(r.finished for r in runs) - t0)

    def compile_server(self) -> tuple[list[str], dict] | None:
        """The --compile server's flags and environment (COMFYD_COMPILE_BACKEND: models/compiled.py)."""
        flags = (self.a.compile_flags or "--compile").split()
        backend = self.a.compile_backend or ("eager" if self.a.tiny else None)  # tiny: dynamo only, no codegen
        return flags, ({"COMFYD_COMPILE_BACKEND": backend} if backend else {})

    def compiled(self, restart: bool) -> None:
        flags, env = self.compile_server()
        names = self.a.compile_workloads.split(",") if self.a.compile_workloads else \
            ["sd15_b1"] if self.a.tiny else list(COMPILE_DEFAULT)
        chosen = [w for w in self.workloads if w.name in names]
        user_dir = os.path.join(self.a.workdir, "user_compile")
        part = self.summary["compiled"] = self.summary["compiled"] or {
            "server_flags": self.base_flags + flags, "backend": env.get("COMFYD_COMPILE_BACKEND", "inductor"),
            "workloads": {}, "restart": {}}
        if not restart:
            shutil.rmtree(user_dir, ignore_errors=True)  # a cold compile cache (comfyd keeps it under <user>)
            if not self.fits(self.need(90), "compile"):
                return
            reserve = self.need(45) if "restart" in self.parts else 0  # a slow compile must leave the restart its time
            try:
                with self.server("compile", flags, user_dir, env) as srv:
                    part["startup_s"] = srv.ready - srv.started
                    self.run_workloads(srv, chosen, "compile", part["workloads"], reserve)
            finally:
                part["compile_log"] = compile_times(os.path.join(self.a.log_dir, "compile.log"))
            return
        if not part["workloads"]:
            self.note("restart measured without a compile part in this run: the cache is whatever an earlier run left")
        # one first prompt per compiled shape, on a fresh server over the same cache
        firsts, seen = [], set()
        for w in chosen:
            if w.shape not in seen and "error" not in part["workloads"].get(w.name, {}):
                seen.add(w.shape)
                firsts.append(w)
        if not self.fits(self.need(40), "restart"):
            return
        with self.server("restart", flags, user_dir, env) as srv:
            part["restart_startup_s"] = srv.ready - srv.started
            current = None
            for w in firsts:
                if not self.fits(self.need(15), f"restart {w.name}"):
                    break
                try:
                    if current not in (None, w.ckpt):
                        srv.free()
                    current = w.ckpt
                    first = {**self.measure(srv, w), "cold_load": True}
                    again = self.measure(srv, w)
                except Exception as e:
                    self.note(f"restart {w.name} failed: {str(e).splitlines()[0]}")
                    stuck(srv, e, f"restart {w.name}")
                    continue
                part["restart"][w.name] = {"first": first, "second": again}
                print(f"[{self.budget.elapsed():5.0f} s] restart {w.name}: first prompt {first['prompt_s']:.2f} s "
                      f"(sampler {first['sampler_s']:.2f} s), then {again['its'] or 0:.2f} it/s", flush=True)
        part["restart_compile_log"] = compile_times(os.path.join(self.a.log_dir, "restart.log"))

    # -- the whole run ------------------------------------------------------------------------------
    def run(self, parts: list[str]) -> dict:
        self.parts = parts
        families = sorted({w.ckpt for w in self.workloads} | ({"sd15"} if "batch" in parts else set()))
        self.ckpts.start(families)
        if self.a.no_overlap:
            for name in families:
                self.ckpts.wait(name, 3600)
        steps = {"eager": self.eager, "batch": self.batch, "compile": lambda: self.compiled(False),
                 "restart": lambda: self.compiled(True)}
        try:
            for name in PARTS:
                if name not in parts:
                    continue
                try:
                    steps[name]()
                except Exception as e:  # keep going: one device call should always return a JSON
                    self.note(f"part {name} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                    print(str(e)[-3000:], file=sys.stderr)
                self.save()
        finally:
            self.ckpts.stop()
            self.save()
        return self.summary


def compile_times(log_path: str) -> list[dict]:
    """comfyd's own compile reports ("compiled UNet for 2x4x64x64 fp16 in 41.2 s", models/compiled.py)."""
    try:
        with open(log_path, errors="replace") as f:
            text = f.read()
    except OSError:
        return []
    return [{"what": m.group(1), "seconds": float(m.group(2))}
            for m in re.finditer(r"compiled (.+?) in ([0-9.]+) ?s", text)]


def spread(values) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise_runs(runs: list[dict]) -> dict:
    def gib(key):
        return spread(r[key] / GiB for r in runs if r.get(key) is not None)
    stats = [r["system_stats_max_s"] for r in runs if r.get("system_stats_max_s") is not None]
    return {"runs": runs, "its": spread(r["its"] for r in runs), "prompt_s": spread(r["prompt_s"] for r in runs),
            "vae_s": spread(r["vae_s"] for r in runs), "sampler_s": spread(r["sampler_s"] for r in runs),
            "peak_process_gib": gib("peak_process_bytes"), "peak_device_used_gib": gib("peak_device_used_bytes"),
            "peak_reserved_gib": gib("peak_reserved_bytes"), "system_stats_max_s": max(stats) if stats else None}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny checkpoints, 2 steps, 64² images")
    p.add_argument("--runs", type=int, default=None, help="timed runs per workload (default 3; 2 with --tiny)")
    p.add_argument("--batch-runs", type=int, default=None, help="timed rounds per N queued prompts (default 2; 1 tiny)")
    p.add_argument("--steps", type=int, default=None, help="default 20 (2 with --tiny)")
    p.add_argument("--only", default="", help=f"comma list of parts to run, of {','.join(PARTS)} (default: all)")
    p.add_argument("--skip", default="", help="comma list of parts to leave out")
    p.add_argument("--workloads", default="", help="comma list of workloads (default: all): "
                   + ",".join(w.name for w in FULL))
    p.add_argument("--compile-workloads", default="", help=f"workloads of the compile parts (default "
                   f"{','.join(COMPILE_DEFAULT)}; sd15_b1 with --tiny)")
    p.add_argument("--compile-flags", default=None, help="the compiled server's flags (default '--compile')")
    p.add_argument("--compile-backend", default=None, help="COMFYD_COMPILE_BACKEND for the compiled servers (default: "
                   "comfyd's, inductor; 'eager' with --tiny, which traces with dynamo but generates no code)")
    p.add_argument("--budget", type=float, default=None, help="seconds for the whole run, 0 = unlimited (default 285; "
                   "240 with --tiny): what no longer fits is skipped with a note")
    p.add_argument("--no-overlap", action="store_true", help="wait for every checkpoint before measuring anything")
    p.add_argument("--server-args", default="", help="extra comfyd flags for every server, with '=': "
                   "--server-args=--highvram")
    p.add_argument("--workdir", default=None, help="base directory (checkpoints in it are reused)")
    p.add_argument("--log-dir", default=None, help="the servers' logs (default WORKDIR/logs)")
    p.add_argument("--oracle-dir", default=None, help="folder with make_ckpt.py and layouts/ (default tests/oracle_data)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "gpu.json"))
    a = p.parse_args(argv)
    a.runs = a.runs or (2 if a.tiny else 3)
    a.batch_runs = a.batch_runs or (1 if a.tiny else 2)
    a.budget = (240.0 if a.tiny else 285.0) if a.budget is None else a.budget
    a.workdir = os.path.abspath(a.workdir or os.path.join("/tmp", "comfyd_gpu_bench_tiny" if a.tiny
                                                          else "comfyd_gpu_bench"))
    a.log_dir = a.log_dir or os.path.join(a.workdir, "logs")
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    parts = [x for x in (a.only.split(",") if a.only else PARTS) if x and x not in a.skip.split(",")]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown part(s) {sorted(unknown)}: choose from {', '.join(PARTS)}")
    workloads = FULL
    if a.tiny:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # the servers' torch: tiny tensors gain nothing from threads
        workloads = [Workload(w.name, w.ckpt, 64, w.batch, w.sampler, w.scheduler) for w in FULL]
    if a.workloads:
        workloads = [w for w in workloads if w.name in a.workloads.split(",")]
    bench = Bench(a, workloads)
    summary = bench.run(parts)
    print("\n" + render(summary), flush=True)
    print(f"\nJSON: {a.out}", flush=True)
    return summary


if __name__ == "__main__":
    main()
