"""The opt-in compiled path (`--compile`): torch.compile of the UNet and the VAE decoder.

Off by default; `configure(args)` at start-up turns it on. With it off, `run_unet` and
`vae_decoder` are never reached (models/diffusion.py and models/vae.py call the modules
directly), so the eager path stays exactly as it was.

With it on, each module gets a CompiledRunner (kept in the module's __dict__, so it lives
and dies with the model and is not a registered submodule):
  - one graph per input shape/dtype (dynamic=False: static shapes, the fastest kernels, and
    CUDA graphs on CUDA through mode "reduce-overhead"); dynamo's recompile limit is raised
    so a handful of sizes and models keep their graphs instead of falling back silently.
  - weights are graph inputs, not constants (inductor's freezing stays off), so LoRA
    patches applied in place (models/lora/patcher.py) are seen by the compiled code; a
    patch that swaps a tensor's dtype makes dynamo's guards recompile for that dtype.
  - calls compile cannot express run eagerly: ControlNet residuals, transformer_options
    patches (attention replacements, block patches), non-tensor extras, weights that are
    not all on the input's device (a partially loaded / --lowvram model).
  - a compile that fails (no C compiler, a backend error) logs a warning and the module
    runs eagerly from then on: a prompt never fails because of --compile.
  - compile time goes to the log ("compiled UNet for 1x4x64x64 fp16 in 41.2 s") and, while
    the compile runs, as `progress` over /ws through models/progress' hook (a percentage
    of the time the last compile of that shape took, or a saturating guess).

The persistent cache lives under <user>/__comfyd/compile_cache: inductor's FX-graph and
AOT-autograd caches (TORCHINDUCTOR_CACHE_DIR; Triton's kernels under it) plus the portable
artifacts of torch.compiler.save_cache_artifacts() (what this process compiled or took from
the cache; rewritten after each compile) reloaded before the first compile, so a restarted
server skips the backend compile (dynamo still traces the Python once per shape).
"""
from __future__ import annotations

import contextvars
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from models import progress

log = logging.getLogger(__name__)

RUNNER_ATTR = "_comfyd_compiled"
ARTIFACTS_FILE = "cache_artifacts.bin"
TIMES_FILE = "compile_times.json"
RECOMPILE_LIMIT = 64  # graphs per forward code object: sizes x dtypes x loaded models


@dataclass
class CompileSettings:
    enabled: bool = False
    backend: str | Callable = "inductor"
    mode: str | None = None        # None: "reduce-overhead" (CUDA graphs) on CUDA, default elsewhere
    cache_dir: str | None = None   # persistent cache; None: torch's default (a temp dir)


_OFF = CompileSettings()
_override: CompileSettings | None = None   # set by configure() (tests, embedders)
_from_flags: tuple | None = None           # (devices.Settings, CompileSettings built from --compile)
_prepared_for: Any = None                  # the settings torch's caches were set up for
_env_before: dict[str, str | None] = {}    # environment values replaced, restored on reset()
_artifacts_lock = threading.Lock()
# set by the user before start-up (torch writes its default into the environment once it
# has looked it up, so the value seen later does not tell who chose it)
_USER_CACHE_DIR = os.environ.get("TORCHINDUCTOR_CACHE_DIR")


def default_cache_dir() -> str:
    from models import folders
    return os.path.join(folders.state().user, "__comfyd", "compile_cache")


def settings() -> CompileSettings:
    """The compile settings in force: configure()'s, else --compile (models/devices.Settings.compile,
    set at start-up from the flags) with COMFYD_COMPILE_BACKEND / COMFYD_COMPILE_MODE picking
    another dynamo backend ("aot_eager", "eager", ...) or inductor mode."""
    global _from_flags
    if _override is not None:
        return _override
    from models import devices
    flags = devices.settings()
    if not getattr(flags, "compile", False):
        return _OFF
    if _from_flags is None or _from_flags[0] is not flags:  # a new start-up (tests build several apps)
        _from_flags = (flags, CompileSettings(enabled=True,
                                            backend=os.environ.get("COMFYD_COMPILE_BACKEND") or "inductor",
                                            mode=os.environ.get("COMFYD_COMPILE_MODE") or None,
                                            cache_dir=default_cache_dir()))
    return _from_flags[1]


def active() -> bool:
    return settings().enabled


def configure(enabled: bool = True, backend="inductor", mode: str | None = None,
              cache_dir: str | None = None) -> CompileSettings:
    """Override --compile (tests, embedders); reset() returns to the flags."""
    global _override
    _override = CompileSettings(enabled, backend, mode, cache_dir)
    return _override


def reset() -> None:
    global _override, _from_flags, _prepared_for
    _override = _from_flags = _prepared_for = None
    _restore_env()


def prepare(s: CompileSettings) -> None:
    """Before the first compile under these settings: recompile limits and the persistent cache."""
    global _prepared_for
    if _prepared_for is s:
        return
    _prepared_for = s
    _configure_torch(s)
    name = s.backend if isinstance(s.backend, str) else getattr(s.backend, "__name__", "custom")
    log.info("--compile: torch.compile backend %s, mode %s, cache %s", name, s.mode or "default", s.cache_dir)


def _set_env(name: str, value: str) -> None:
    if name not in _env_before:
        _env_before[name] = os.environ.get(name)
    os.environ[name] = value


def _restore_env() -> None:
    for name, value in _env_before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _env_before.clear()


def _configure_torch(s: CompileSettings) -> None:
    _restore_env()
    import torch._dynamo.config as dynamo_config
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT)
    if os.environ.get("COMFYD_COMPILE_PRECOMPILE") == "1":
        # experimental in torch 2.13: dynamo's traced bytecode and guards cached too, so a
        # restart skips tracing (tiny model: 14 s -> 5 s) at the price of some dropped guards
        dynamo_config.caching_precompile = True
    if not s.cache_dir:
        return
    os.makedirs(s.cache_dir, exist_ok=True)
    # read by inductor at each use (torch._inductor.runtime.cache_dir_utils), so setting it
    # before the first compile is enough (Triton's kernels go under it too, per device); a
    # TORCHINDUCTOR_CACHE_DIR the user set wins
    if not _USER_CACHE_DIR:
        _set_env("TORCHINDUCTOR_CACHE_DIR", s.cache_dir)
    try:
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config
        inductor_config.fx_graph_cache = True
        functorch_config.enable_autograd_cache = True
    except Exception as e:  # an older/other torch: the caches are an optimisation only
        log.debug("compile caches not configured: %s", e)
    load_artifacts(s.cache_dir)


# -- the portable cache artifacts ---------------------------------------------------------

def load_artifacts(cache_dir: str) -> bool:
    path = os.path.join(cache_dir, ARTIFACTS_FILE)
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            info = torch.compiler.load_cache_artifacts(f.read())
        log.info("compile cache: loaded %s", _describe_info(info))
        return True
    except Exception as e:
        log.warning("compile cache %s could not be loaded (%s); compiling afresh", path, e)
        return False


def save_artifacts(cache_dir: str | None = None) -> bool:
    """Write what this process compiled (and loaded) to the artifacts file."""
    cache_dir = cache_dir or settings().cache_dir
    if not cache_dir:
        return False
    try:
        with _artifacts_lock:
            result = torch.compiler.save_cache_artifacts()
            if result is None:
                return False
            data, _info = result
            path = os.path.join(cache_dir, ARTIFACTS_FILE)
            os.makedirs(cache_dir, exist_ok=True)
            tmp = path + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return True
    except Exception as e:
        log.warning("compile cache artifacts not saved: %s", e)
        return False


def _describe_info(info) -> str:
    if info is None:
        return "nothing"
    parts = {k: len(v) for k, v in getattr(info, "artifacts", {}).items() if v}
    return ", ".join(f"{n} {k}" for k, n in parts.items()) or "nothing"


def _times_path() -> str | None:
    cache_dir = settings().cache_dir
    return os.path.join(cache_dir, TIMES_FILE) if cache_dir else None


def _load_times() -> dict:
    path = _times_path()
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, TypeError, ValueError):
        return {}


def _store_time(label: str, seconds: float) -> None:
    path = _times_path()
    if path is None:
        return
    times = _load_times()
    times[label] = round(seconds, 2)
    try:
        with open(path + ".tmp", "w") as f:
            json.dump(times, f, indent=1, sort_keys=True)
        os.replace(path + ".tmp", path)
    except OSError:
        pass


# -- progress while compiling -----------------------------------------------------------

class CompileProgress:
    """Reports 0..100 through the progress hook from a side thread while a compile blocks the
    node's thread (the hook is thread-safe; the node's context is copied so the event names
    the node that is compiling)."""

    TOTAL = 100

    def __init__(self, estimate: float | None, interval: float = 1.0):
        self.hook = progress.get_progress_hook()
        self.estimate = estimate
        self.interval = interval
        self.start = time.perf_counter()
        self._stop = threading.Event()
        self._thread = None
        self._ctx = contextvars.copy_context()

    def fraction(self, elapsed: float) -> float:
        if self.estimate:
            return min(0.99, elapsed / self.estimate)
        return min(0.99, 1.0 - math.exp(-elapsed / 30.0))  # unknown: approaches 99% over minutes

    def _send(self, value: float) -> None:
        try:
            self._ctx.run(self.hook, value, self.TOTAL, None, None)
        except Exception as e:  # a broken client connection must not stop the compile
            log.debug("compile progress not sent: %s", e)

    def _run(self):
        while not self._stop.wait(self.interval):
            self._send(round(self.TOTAL * self.fraction(time.perf_counter() - self.start), 1))

    def __enter__(self):
        if self.hook is not None:
            self._send(0)
            self._thread = threading.Thread(target=self._run, name="compile-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            if exc_type is None:
                self._send(self.TOTAL)
        return False


# -- the runners --------------------------------------------------------------------------

def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
            torch.float64: "fp64"}.get(dtype, str(dtype).replace("torch.", ""))


def describe(t: torch.Tensor) -> str:
    """'1x4x64x64 fp16' for log lines."""
    return "x".join(str(d) for d in t.shape) + " " + _dtype_name(t.dtype)


def _signature(value) -> Any:
    if torch.is_tensor(value):
        return (tuple(value.shape), value.dtype, value.device)
    if isinstance(value, dict):
        return tuple((k, _signature(v)) for k, v in sorted(value.items()))
    if isinstance(value, (tuple, list)):
        return tuple(_signature(v) for v in value)
    return value


def _weights_on(leaves: list, device: torch.device) -> bool:
    """Every weight already on the input's device (not a partially loaded / streamed model).
    `leaves`: the modules holding parameters, listed once (a move may replace Parameter
    objects, never modules); the loop costs about 0.3 ms for an SDXL UNet on the CPU."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        on = lambda p: p.is_cuda and p.get_device() == index  # noqa: E731
    elif device.type == "cpu":
        on = lambda p: p.is_cpu  # noqa: E731
    else:
        on = lambda p: p.device == device  # noqa: E731
    for m in leaves:
        for p in m._parameters.values():
            if p is not None and not on(p):
                return False
    return True


class CompiledRunner:
    """torch.compile of one module's call, with per-shape bookkeeping and eager fallback."""

    def __init__(self, what: str, module: nn.Module, wrapper: nn.Module):
        self.what = what
        self.wrapper = wrapper
        self.leaves = [m for m in module.modules() if m._parameters]
        self.compiled: dict[str, Callable] = {}  # per device type: the mode differs on CUDA
        self.graphs: dict[Any, float] = {}      # shape key -> seconds its first call took
        self.compiles = 0                         # graphs dynamo compiled for this module
        self.failed: str | None = None            # why it runs eagerly for good

    def __deepcopy__(self, memo):  # a copied model compiles for itself
        return None

    def __reduce__(self):  # pickled with its model: comes back as "not compiled yet"
        return (type(None), ())

    @staticmethod
    def mode_for(s: CompileSettings, device: torch.device) -> str | None:
        if s.mode:
            return None if device.type != "cuda" and s.mode == "reduce-overhead" else s.mode
        if device.type == "cuda" and s.backend == "inductor":
            return "reduce-overhead"  # CUDA graphs: shapes are static, one graph per size
        return None

    def _fn(self, s: CompileSettings, device: torch.device):
        mode = self.mode_for(s, device)
        key = (device.type, s.backend, mode)
        fn = self.compiled.get(key)
        if fn is None:
            prepare(s)
            fn = torch.compile(self.wrapper, backend=s.backend, mode=mode, dynamic=False)
            self.compiled[key] = fn
        return fn

    def __call__(self, args: tuple, eager: Callable[[], torch.Tensor], label: str) -> torch.Tensor:
        if self.failed is not None:
            return eager()
        device = args[0].device
        s = settings()
        key = (_signature(args), torch.is_grad_enabled(), torch.is_inference_mode_enabled(), s.backend, s.mode)
        first = key not in self.graphs
        from torch._dynamo.utils import counters
        before = counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        cuda_graphs = device.type == "cuda" and self.mode_for(s, device) in ("reduce-overhead", "max-autotune")
        try:
            if first:
                log.info("compiling %s for %s ...", self.what, label)
                with CompileProgress(_load_times().get(f"{self.what} {label}")):
                    out = self._call(s, device, args, cuda_graphs)
            else:
                out = self._call(s, device, args, cuda_graphs)
        except (progress.InterruptProcessingException, torch.OutOfMemoryError):
            raise
        except Exception as e:
            return self._fall_back(e, eager, label)
        compiled_now = counters["stats"]["unique_graphs"] - before
        if first or compiled_now:
            seconds = time.perf_counter() - start
            self.graphs[key] = seconds
            if compiled_now:
                self.compiles += compiled_now
                log.info("compiled %s for %s in %.1f s", self.what, label, seconds)
                _store_time(f"{self.what} {label}", seconds)
                save_artifacts()
        return out

    def _call(self, s, device, args, cuda_graphs: bool):
        fn = self._fn(s, device)
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
            return fn(*args).clone()  # the graph's output buffer is reused by the next replay
        return fn(*args)

    def _fall_back(self, error: Exception, eager, label: str):
        root = getattr(error, "inner_exception", None) or error  # a backend's own error, unwrapped
        first_line = (str(root).strip().splitlines() or [""])[0][:500]
        self.failed = f"{type(root).__name__}: {first_line}"
        log.warning("torch.compile of %s for %s failed, running it eagerly from now on: %s",
                    self.what, label, self.failed)
        try:
            return eager()
        except Exception:
            self.failed = None  # the eager call fails too: the input is at fault, not compile
            raise


def runner_for(module: nn.Module, what: str, wrapper_cls) -> CompiledRunner:
    runner = module.__dict__.get(RUNNER_ATTR)
    if runner is None:
        runner = CompiledRunner(what, module, wrapper_cls(module))
        module.__dict__[RUNNER_ATTR] = runner  # not a submodule: no state-dict keys, no .to()
    return runner


def runner_of(module: nn.Module) -> CompiledRunner | None:
    return module.__dict__.get(RUNNER_ATTR)


class _UNetCall(nn.Module):
    """The UNet without ControlNet or patches: a fresh transformer_options per call, so the
    graph depends on no caller state."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, timesteps, context, extra: dict):
        return self.unet(x, timesteps, context=context, control=None, transformer_options={}, **extra)


class _DecodeCall(nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, z):
        return self.vae.decode(z)


def unet_eager_reason(runner: CompiledRunner, x, control, transformer_options, extra) -> str | None:
    """Why this UNet call runs eagerly under --compile (None: it can be compiled)."""
    if control:
        return "ControlNet residuals"
    opts = transformer_options or {}
    if opts.get("patches") and any(opts["patches"].values()):
        return "transformer patches"
    if opts.get("patches_replace") and any(opts["patches_replace"].values()):
        return "attention replacements"
    if any(v is not None and not torch.is_tensor(v) for v in extra.values()):
        return "non-tensor inputs"
    if not _weights_on(runner.leaves, x.device):
        return "weights not all on the compute device"
    return None


def run_unet(unet: nn.Module, x, timesteps, context=None, control=None, transformer_options=None, **extra):
    """The UNet call of DiffusionModel.apply_model under --compile."""
    def eager():
        return unet(x, timesteps, context=context, control=control,
                    transformer_options=transformer_options or {}, **extra)
    runner = runner_for(unet, "UNet", _UNetCall)
    if unet_eager_reason(runner, x, control, transformer_options, extra) is not None:
        return eager()
    tensors = {k: v for k, v in extra.items() if v is not None}
    return runner((x, timesteps, context, tensors), eager, describe(x))


def vae_decoder(vae_model: nn.Module) -> Callable:
    """What VAE decoding calls: the model's own decode, or its compiled form under --compile."""
    if not active():
        return vae_model.decode

    def decode(z):
        runner = runner_for(vae_model, "VAE decoder", _DecodeCall)
        if not _weights_on(runner.leaves, z.device):
            return vae_model.decode(z)
        return runner((z,), lambda: vae_model.decode(z), describe(z))
    return decode
