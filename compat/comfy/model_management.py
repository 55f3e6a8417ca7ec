"""`comfy.model_management` for custom node packs: devices, memory, interruption."""
from __future__ import annotations

import gc

import psutil
import torch

from models.progress import InterruptProcessingException, check_interrupted, interrupt_requested, request_interrupt  # noqa: F401

OOM_EXCEPTION = torch.OutOfMemoryError
_force_cpu = {"value": not torch.cuda.is_available()}


def set_cpu(force: bool) -> None:
    _force_cpu["value"] = force or not torch.cuda.is_available()


def get_torch_device() -> torch.device:
    return torch.device("cpu") if _force_cpu["value"] else torch.device("cuda", torch.cuda.current_device())


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
