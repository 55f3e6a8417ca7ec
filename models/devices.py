"""Where models run and in which precision: the compute device and the dtype policy.

The server calls `configure(args)` once at start-up with ComfyUI's flags (--cpu, --highvram,
--lowvram, --novram, --reserve-vram, --force-fp16/32, --bf16-unet, --fp16-vae, ...). Everything
else asks this module: `compute_device()` (a ComputeDevice: the torch device plus what the
memory manager needs to know about it), and per model part the weight dtype (what the
tensors are stored in) and the compute dtype (what each layer runs in; models/ops.py casts
per layer when they differ, so an fp16 file can run in fp32 on the CPU at half the memory).

The policy follows ComfyUI 0.8.0's facts (comfy/model_management.py):
  UNet           fp16 where the card runs fp16 well (compute capability >= 7, not the GTX 16
                 series, not Pascal on Linux), else bf16 on Ampere+ (never reached for SD:
                 fp16 is preferred), else fp32; always fp32 on the CPU.
  VAE (KL-f8)    bf16 on cards with bf16 (Ampere+), else fp32: the SD/SDXL VAE overflows in fp16.
  text encoders  weights fp16, every layer computed in fp32.
  flags          --fp32-unet/--bf16-unet/--fp16-unet, --fp16-vae/--bf16-vae/--fp32-vae,
                 --fp16-text-enc/--bf16-text-enc/--fp32-text-enc win; --force-fp32 turns off
                 fp16 and bf16 choices, --force-fp16 turns fp16 on for any CUDA card.

A FakeDevice (torch device "cpu", a byte budget the manager's placements are counted
against) lets tests drive the memory manager's decisions without a GPU.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from enum import Enum

import psutil
import torch

log = logging.getLogger(__name__)

GiB = 1024 ** 3
MiB = 1024 ** 2
DEFAULT_RESERVED = 400 * MiB       # ComfyUI's EXTRA_RESERVED_VRAM (Linux)
INFERENCE_MINIMUM = int(0.8 * GiB)  # ComfyUI's minimum_inference_memory() without the reserve
MIN_WEIGHT_MEMORY_RATIO = 0.4      # share of free memory a partially loaded model may take
FP16_BROKEN = ("1660", "1650", "1630", "T500", "T550", "T600", "MX550", "MX450", "CMP 30HX", "T2000",
               "T1000", "T1200")  # GTX 16 series and relatives: fp16 gives NaNs
PASCAL = ("1080", "1070", "titan x", "p3000", "p3200", "p4000", "p4200", "p5000", "p5200", "p6000",
          "1060", "1050", "p40", "p100", "p6", "p4")  # fp16 works but fp32 is faster on Linux


class VRAMState(Enum):
    DISABLED = 0  # no GPU: everything on the CPU
    NO_VRAM = 1
    LOW_VRAM = 2
    NORMAL_VRAM = 3
    HIGH_VRAM = 4
    SHARED = 5


# -- devices ---------------------------------------------------------------------------

class ComputeDevice:
    """A device models run on. `managed`: the memory manager budgets it (GPUs); the CPU is
    not managed (models simply live in RAM there)."""

    kind = "cpu"          # what the dtype policy sees: "cpu" or "cuda"
    managed = False
    capability = (0, 0)
    device_name = "cpu"

    def __init__(self, torch_device="cpu"):
        self.torch_device = torch.device(torch_device)

    def total_memory(self) -> int:
        return psutil.virtual_memory().total

    def free_memory(self) -> int:
        """Free bytes, counting memory torch has cached but not in use as free."""
        return psutil.virtual_memory().available

    def torch_memory(self) -> tuple[int, int]:
        """(reserved by torch's allocator, reserved but unused)."""
        return 0, 0

    def track(self, delta: int) -> None:
        """The manager placed (+) or removed (-) this many bytes of weights here."""

    def empty_cache(self) -> None:
        pass

    def peak_memory(self) -> int:
        return 0

    def __repr__(self):
        return f"{type(self).__name__}({self.torch_device})"


class CpuDevice(ComputeDevice):
    pass


class CudaDevice(ComputeDevice):
    kind = "cuda"
    managed = True

    def __init__(self, index: int | None = None):
        index = torch.cuda.current_device() if index is None else index
        super().__init__(torch.device("cuda", index))
        self._props = None

    def _properties(self):
        if self._props is None:  # read on first use: creating the device must not touch the driver
            try:
                props = torch.cuda.get_device_properties(self.torch_device)
                self._props = ((props.major, props.minor), props.name)
            except (RuntimeError, AssertionError, AttributeError):
                self._props = ((0, 0), torch.cuda.get_device_name(self.torch_device))
        return self._props

    @property
    def capability(self):
        return self._properties()[0]

    @property
    def device_name(self):
        return self._properties()[1]

    def total_memory(self) -> int:
        return torch.cuda.mem_get_info(self.torch_device)[1]

    def free_memory(self) -> int:
        free, _ = torch.cuda.mem_get_info(self.torch_device)
        reserved, unused = self.torch_memory()
        return free + unused

    def torch_memory(self) -> tuple[int, int]:
        stats = torch.cuda.memory_stats(self.torch_device)
        reserved = stats.get("reserved_bytes.all.current", 0)
        return reserved, reserved - stats.get("active_bytes.all.current", 0)

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()

    def peak_memory(self) -> int:
        return torch.cuda.max_memory_reserved(self.torch_device)


class FakeDevice(ComputeDevice):
    """A managed device for tests: tensors stay on the CPU, and free memory is the budget
    minus the weights the manager placed here minus `other_use` (activations, other apps)."""

    managed = True

    def __init__(self, budget: int, kind: str = "cpu", capability=(0, 0), name: str = "fake"):
        super().__init__("cpu")
        self.budget = int(budget)
        self.resident = 0
        self.other_use = 0
        self.kind, self.capability, self.device_name = kind, capability, name
        self.empty_cache_calls = 0

    def total_memory(self) -> int:
        return self.budget

    def free_memory(self) -> int:
        return self.budget - self.resident - self.other_use

    def torch_memory(self) -> tuple[int, int]:
        return self.resident, 0

    def track(self, delta: int) -> None:
        self.resident += delta

    def empty_cache(self) -> None:
        self.empty_cache_calls += 1


# -- settings from the command line ------------------------------------------------------

@dataclass
class Settings:
    cpu: bool = False
    vram_state: VRAMState = VRAMState.NORMAL_VRAM
    reserved: int = DEFAULT_RESERVED
    force_fp32: bool = False
    force_fp16: bool = False
    unet: torch.dtype | None = None
    vae: torch.dtype | None = None
    text_encoder: torch.dtype | None = None
    cpu_vae: bool = False
    gpu_only: bool = False
    disable_smart_memory: bool = False
    channels_last: bool = False  # --force-channels-last: the UNet runs NHWC (models/unet.py)
    compile: bool = False  # --compile: torch.compile the UNet and VAE decoder (models/compiled.py)

    @property
    def minimum_inference_memory(self) -> int:
        return INFERENCE_MINIMUM + self.reserved


_state: dict = {"settings": Settings(), "device": None}


def _flag_dtype(args, choices) -> torch.dtype | None:
    for flag, dtype in choices:
        if getattr(args, flag, False):
            return dtype
    return None


def settings_from_args(args) -> Settings:
    s = Settings()
    s.cpu = bool(getattr(args, "cpu", False))
    if getattr(args, "lowvram", False):
        s.vram_state = VRAMState.LOW_VRAM
    elif getattr(args, "novram", False):
        s.vram_state = VRAMState.NO_VRAM
    elif getattr(args, "highvram", False) or getattr(args, "gpu_only", False):
        s.vram_state = VRAMState.HIGH_VRAM
    if getattr(args, "reserve_vram", None) is not None:
        s.reserved = int(args.reserve_vram * GiB)
    s.force_fp32 = bool(getattr(args, "force_fp32", False))
    s.force_fp16 = bool(getattr(args, "force_fp16", False))
    s.unet = _flag_dtype(args, (("fp32_unet", torch.float32), ("fp64_unet", torch.float64),
                                ("bf16_unet", torch.bfloat16), ("fp16_unet", torch.float16)))
    s.vae = _flag_dtype(args, (("fp16_vae", torch.float16), ("bf16_vae", torch.bfloat16),
                               ("fp32_vae", torch.float32)))
    s.text_encoder = _flag_dtype(args, (("fp16_text_enc", torch.float16), ("bf16_text_enc", torch.bfloat16),
                                        ("fp32_text_enc", torch.float32)))
    s.cpu_vae = bool(getattr(args, "cpu_vae", False))
    s.gpu_only = bool(getattr(args, "gpu_only", False))
    s.disable_smart_memory = bool(getattr(args, "disable_smart_memory", False))
    s.channels_last = bool(getattr(args, "force_channels_last", False))
    s.compile = bool(getattr(args, "compile", False))
    return s


def select_visible_devices(args, environ=os.environ) -> None:
    """--cuda-device N / --default-device N as ComfyUI applies them: through
    CUDA_VISIBLE_DEVICES, which must be set before CUDA initialises (server/main.py calls
    this before anything touches torch.cuda)."""
    if getattr(args, "cuda_device", None) is not None:
        environ["CUDA_VISIBLE_DEVICES"] = str(args.cuda_device)
        log.info("Set cuda device to: %s", args.cuda_device)
    elif getattr(args, "default_device", None) is not None:
        # counting the devices would initialise CUDA before the variable is read: list 32, as ComfyUI
        order = [args.default_device] + [i for i in range(32) if i != args.default_device]
        environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in order)


def configure(args=None, device: ComputeDevice | None = None) -> Settings:
    """Apply the flags; `device` overrides the compute device (tests pass a FakeDevice)."""
    s = settings_from_args(args) if args is not None else Settings()
    if device is None:
        device = CpuDevice() if (s.cpu or not torch.cuda.is_available()) else CudaDevice()
    if not device.managed:
        s.vram_state = VRAMState.DISABLED
    _state["settings"], _state["device"] = s, device
    if device.kind == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls (VAE fallback) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    log.info("compute device %s, vram state %s", device.torch_device, s.vram_state.name)
    return s


def settings() -> Settings:
    return _state["settings"]


def compute_device() -> ComputeDevice:
    if _state["device"] is None:
        configure()
    return _state["device"]


def resolve(torch_device) -> ComputeDevice:
    """The ComputeDevice a model placed on `torch_device` runs on (the compute device when
    it is that device, else the unmanaged CPU)."""
    dev = compute_device()
    if torch_device is None or torch.device(torch_device) == dev.torch_device:
        return dev
    td = torch.device(torch_device)
    if td.type == "cuda" and dev.kind == "cuda" and td.index is None:
        return dev
    return CpuDevice(td) if td.type == "cpu" else dev


# -- dtype policy ------------------------------------------------------------------------

def dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def fp16_ok(device: ComputeDevice | None = None, prioritize_performance: bool = True) -> bool:
    """Whether a model should compute in fp16 on `device` (ComfyUI's should_use_fp16)."""
    device = device or compute_device()
    s = settings()
    if device.kind == "cpu":
        return False
    if s.force_fp16:
        return True
    if s.force_fp32:
        return False
    major = device.capability[0]
    if major >= 8:
        return True
    if major < 6:
        return False
    if any(n in device.device_name.lower() for n in PASCAL):
        return False  # Linux: fp32 is faster on these
    if major < 7:
        return False
    return not any(n in device.device_name for n in FP16_BROKEN)


def bf16_ok(device: ComputeDevice | None = None) -> bool:
    device = device or compute_device()
    if device.kind == "cpu" or settings().force_fp32:
        return False
    return device.capability[0] >= 8


HALF = (torch.float16, torch.bfloat16)


def unet_dtype(device: ComputeDevice | None = None, stored: torch.dtype | None = None) -> torch.dtype:
    """The dtype the UNet computes in (SD1/SD2/SDXL support fp16, bf16, fp32 in that order)."""
    device = device or compute_device()
    if settings().unet is not None:
        return settings().unet
    if fp16_ok(device):
        return torch.float16
    if bf16_ok(device):
        return torch.bfloat16
    return torch.float32


def vae_dtype(device: ComputeDevice | None = None) -> torch.dtype:
    """KL-f8 VAEs work in bf16 or fp32 (fp16 overflows in the decoder's up blocks)."""
    device = device or compute_device()
    if settings().vae is not None:
        return settings().vae
    return torch.bfloat16 if bf16_ok(device) else torch.float32


def vae_upcast_dtype(device: ComputeDevice | None = None) -> torch.dtype:
    """What a VAE falls back to when its fp16 output has NaNs or infinities."""
    return torch.bfloat16 if bf16_ok(device) else torch.float32


def text_encoder_dtype(device: ComputeDevice | None = None) -> torch.dtype:
    """The text encoders' weight dtype (they always compute in fp32, as ComfyUI)."""
    return settings().text_encoder or torch.float16


def precision(part: str, stored: torch.dtype | None = None,
              device: ComputeDevice | None = None) -> tuple[torch.dtype, torch.dtype]:
    """(weight dtype, compute dtype) of a model part ("unet", "vae", "text_encoder")
    whose file stores `stored`. On the CPU half-precision files stay half in memory and
    compute in fp32 (exact, half the RAM); on a GPU weights are kept in the compute dtype."""
    device = device or compute_device()
    if part == "text_encoder":
        return text_encoder_dtype(device), torch.float32
    compute = unet_dtype(device, stored) if part == "unet" else vae_dtype(device)
    if compute == torch.float32 and stored in HALF and device.kind == "cpu":
        return stored, compute
    return compute, compute


# -- where each part lives ----------------------------------------------------------------

def unet_device() -> torch.device:
    return compute_device().torch_device


def offload_device() -> torch.device:
    """Where weights rest when they are not on the compute device."""
    s = settings()
    if s.gpu_only or s.vram_state == VRAMState.HIGH_VRAM:
        return compute_device().torch_device
    return torch.device("cpu")


def text_encoder_device() -> torch.device:
    s = settings()
    dev = compute_device()
    if s.gpu_only:
        return dev.torch_device
    if s.vram_state in (VRAMState.HIGH_VRAM, VRAMState.NORMAL_VRAM) and fp16_ok(dev, prioritize_performance=False):
        return dev.torch_device
    return torch.device("cpu") if dev.kind == "cuda" else dev.torch_device


def vae_device() -> torch.device:
    return torch.device("cpu") if settings().cpu_vae else compute_device().torch_device


def intermediate_device() -> torch.device:
    return compute_device().torch_device if settings().gpu_only else torch.device("cpu")
