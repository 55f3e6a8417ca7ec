"""`comfy.model_management` for custom node packs: devices, memory, interruption."""
from __future__ import annotations

import gc
from enum import Enum

import psutil
import torch

from models.progress import InterruptProcessingException, check_interrupted, interrupt_requested, request_interrupt  # noqa: F401

OOM_EXCEPTION = torch.OutOfMemoryError
_force_cpu = {"value": None}  # None: follow the server's --cpu flag


class VRAMState(Enum):
    DISABLED = 0  # no GPU: everything on the CPU
    NO_VRAM = 1
    LOW_VRAM = 2
    NORMAL_VRAM = 3
    HIGH_VRAM = 4
    SHARED = 5


class CPUState(Enum):
    GPU = 0
    CPU = 1
    MPS = 2


def set_cpu(force: bool) -> None:
    _force_cpu["value"] = force


def _cpu_only() -> bool:
    if not torch.cuda.is_available():
        return True
    if _force_cpu["value"] is not None:
        return _force_cpu["value"]
    from comfy.cli_args import args
    return bool(getattr(args, "cpu", False))


def get_torch_device() -> torch.device:
    return torch.device("cpu") if _cpu_only() else torch.device("cuda", torch.cuda.current_device())


def __getattr__(name):
    # module-level state ComfyUI keeps as globals, computed from the flags when read
    if name == "cpu_state":
        return CPUState.CPU if _cpu_only() else CPUState.GPU
    if name == "vram_state":
        return VRAMState.DISABLED if _cpu_only() else VRAMState.NORMAL_VRAM
    raise AttributeError(name)


def cpu_mode() -> bool:
    return _cpu_only()


def mps_mode() -> bool:
    return False  # comfyd runs on CUDA or the CPU


def is_intel_xpu() -> bool:
    return False


def xformers_enabled() -> bool:
    return False  # comfyd's attention is PyTorch SDPA


def pytorch_attention_enabled() -> bool:
    return True


def get_autocast_device(dev) -> str:
    return torch.device(dev).type if dev is not None else "cuda"


def device_supports_non_blocking(device) -> bool:
    return torch.device(device).type == "cuda"


def module_size(module) -> int:
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


def intermediate_device() -> torch.device:
    return torch.device("cpu")


def unet_offload_device() -> torch.device:
    return torch.device("cpu")


def text_encoder_device() -> torch.device:
    return get_torch_device()


def vae_device() -> torch.device:
    return get_torch_device()


def is_device_cpu(device) -> bool:
    return torch.device(device).type == "cpu"


def get_free_memory(dev=None, torch_free_too=False):
    dev = get_torch_device() if dev is None else torch.device(dev)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        stats = torch.cuda.memory_stats(dev)
        torch_free = stats.get("reserved_bytes.all.current", 0) - stats.get("active_bytes.all.current", 0)
        total = free + torch_free
        return (total, torch_free) if torch_free_too else total
    avail = psutil.virtual_memory().available
    return (avail, avail) if torch_free_too else avail


def get_total_memory(dev=None, torch_total_too=False):
    dev = get_torch_device() if dev is None else torch.device(dev)
    if dev.type == "cuda":
        _, total = torch.cuda.mem_get_info(dev)
        reserved = torch.cuda.memory_stats(dev).get("reserved_bytes.all.current", 0)
        return (total, reserved) if torch_total_too else total
    total = psutil.virtual_memory().total
    return (total, total) if torch_total_too else total


def soft_empty_cache(force: bool = False) -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def unload_all_models() -> None:
    gc.collect()
    soft_empty_cache()


def cleanup_models_gc() -> None:
    gc.collect()


def interrupt_current_processing(value: bool = True) -> None:
    request_interrupt(value)


def processing_interrupted() -> bool:
    return interrupt_requested()


def throw_exception_if_processing_interrupted() -> None:
    check_interrupted()


def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False) -> bool:
    dev = get_torch_device() if device is None else torch.device(device)
    return dev.type == "cuda"


def should_use_bf16(device=None, model_params=0, prioritize_performance=True, manual_cast=False) -> bool:
    dev = get_torch_device() if device is None else torch.device(device)
    return dev.type == "cuda" and torch.cuda.is_bf16_supported()


def cast_to_device(tensor, device, dtype, copy=False):
    return tensor.to(device=device, dtype=dtype, copy=copy)
