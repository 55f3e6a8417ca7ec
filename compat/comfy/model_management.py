"""`comfy.model_management` for custom node packs: devices, memory, interruption."""
from __future__ import annotations

import gc
from enum import Enum

import torch

from models import devices, memory
from models.devices import VRAMState  # noqa: F401 - packs compare against these members
from models.progress import InterruptProcessingException, check_interrupted, interrupt_requested, request_interrupt  # noqa: F401

OOM_EXCEPTION = torch.OutOfMemoryError
_force_cpu = {"value": None}  # set_cpu(True): packs that force the CPU for what they run themselves


class CPUState(Enum):
    GPU = 0
    CPU = 1
    MPS = 2


def set_cpu(force: bool) -> None:
    _force_cpu["value"] = force


def _cpu_only() -> bool:
    if _force_cpu["value"] is not None:
        return bool(_force_cpu["value"]) or devices.compute_device().kind != "cuda"
    return devices.compute_device().kind != "cuda"


def get_torch_device() -> torch.device:
    return torch.device("cpu") if _cpu_only() else devices.compute_device().torch_device


def __getattr__(name):
    # module-level state ComfyUI keeps as globals, read from comfyd's runtime when asked
    if name == "cpu_state":
        return CPUState.CPU if _cpu_only() else CPUState.GPU
    if name == "vram_state":
        return VRAMState.DISABLED if _cpu_only() else devices.settings().vram_state
    if name == "current_loaded_models":
        return memory.manager().loaded()
    if name == "EXTRA_RESERVED_VRAM":
        return devices.settings().reserved
    if name == "DISABLE_SMART_MEMORY":
        return devices.settings().disable_smart_memory
    raise AttributeError(name)


MIN_WEIGHT_MEMORY_RATIO = devices.MIN_WEIGHT_MEMORY_RATIO


def cpu_mode() -> bool:
    return _cpu_only()


def mps_mode() -> bool:
    return False  # comfyd runs on CUDA or the CPU


def is_intel_xpu() -> bool:
    return False


def is_nvidia() -> bool:
    return devices.compute_device().kind == "cuda" and torch.version.cuda is not None


def is_amd() -> bool:
    return devices.compute_device().kind == "cuda" and torch.version.hip is not None


def is_directml_enabled() -> bool:
    return False


def xformers_enabled() -> bool:
    return False  # comfyd's attention is PyTorch SDPA


def xformers_enabled_vae() -> bool:
    return False


def pytorch_attention_enabled() -> bool:
    return True


def pytorch_attention_enabled_vae() -> bool:
    return True


def pytorch_attention_flash_attention() -> bool:
    return devices.compute_device().kind == "cuda"


def sage_attention_enabled() -> bool:
    return False


def flash_attention_enabled() -> bool:
    return False


def get_autocast_device(dev) -> str:
    return torch.device(dev).type if dev is not None else "cuda"


def device_supports_non_blocking(device) -> bool:
    return torch.device(device).type == "cuda"


def module_size(module) -> int:
    return memory.module_size(module)


def dtype_size(dtype) -> int:
    return devices.dtype_size(dtype)


def intermediate_device() -> torch.device:
    return devices.intermediate_device()


def unet_offload_device() -> torch.device:
    return devices.offload_device()


def unet_inital_load_device(parameters, dtype) -> torch.device:
    from models.placement import initial_device
    return initial_device(parameters * devices.dtype_size(dtype))


def text_encoder_device() -> torch.device:
    return devices.text_encoder_device()


def text_encoder_offload_device() -> torch.device:
    return devices.offload_device() if devices.settings().gpu_only else torch.device("cpu")


def text_encoder_initial_device(load_device, offload_device, model_size=0) -> torch.device:
    return torch.device(offload_device)


def vae_device() -> torch.device:
    return devices.vae_device()


def vae_offload_device() -> torch.device:
    return devices.offload_device() if devices.settings().gpu_only else torch.device("cpu")


def is_device_type(device, kind) -> bool:
    return getattr(device, "type", None) == kind


def is_device_cpu(device) -> bool:
    return torch.device(device).type == "cpu"


def is_device_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def is_device_mps(device) -> bool:
    return False


def force_channels_last() -> bool:
    """--force-channels-last (custom nodes ask before converting their own modules)."""
    return devices.settings().channels_last


def get_free_memory(dev=None, torch_free_too=False):
    dev = devices.resolve(get_torch_device() if dev is None else dev)
    free = dev.free_memory()
    torch_free = dev.torch_memory()[1] if dev.kind == "cuda" else free
    return (free, torch_free) if torch_free_too else free


def get_total_memory(dev=None, torch_total_too=False):
    dev = devices.resolve(get_torch_device() if dev is None else dev)
    total = dev.total_memory()
    torch_total = dev.torch_memory()[0] if dev.kind == "cuda" else total
    return (total, torch_total) if torch_total_too else total


def extra_reserved_memory() -> int:
    return devices.settings().reserved


def minimum_inference_memory() -> int:
    return devices.settings().minimum_inference_memory


def maximum_vram_for_weights(device=None) -> float:
    return get_total_memory(device) * 0.88 - minimum_inference_memory()


# -- the memory manager (models/memory.py) --------------------------------------------------
def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False) -> None:
    memory.load_models(list(models), memory_required, force_full=force_full_load)


def load_model_gpu(model) -> None:
    load_models_gpu([model])


def free_memory(memory_required, device, keep_loaded=()) -> list:
    keep = [e for e in (memory.manager().register(m) for m in keep_loaded) if e is not None]
    return memory.manager().free_memory(memory_required, devices.resolve(device), keep)


def loaded_models(only_currently_used=False) -> list:
    return memory.manager().loaded()


def soft_empty_cache(force: bool = False) -> None:
    memory.soft_empty_cache()


def unload_all_models() -> None:
    memory.manager().unload_all()


def unload_model_clones(model, unload_weights_only=True, force_unload=True) -> None:
    memory.manager().unload(model)


def cleanup_models() -> None:
    memory.manager().loaded()  # drops models that were garbage-collected


def cleanup_models_gc() -> None:
    gc.collect()


def interrupt_current_processing(value: bool = True) -> None:
    request_interrupt(value)


def processing_interrupted() -> bool:
    return interrupt_requested()


def throw_exception_if_processing_interrupted() -> None:
    check_interrupted()


def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False) -> bool:
    return devices.fp16_ok(devices.resolve(device) if device is not None else None, prioritize_performance)


def should_use_bf16(device=None, model_params=0, prioritize_performance=True, manual_cast=False) -> bool:
    return devices.bf16_ok(devices.resolve(device) if device is not None else None)


def unet_dtype(device=None, model_params=0, supported_dtypes=(torch.float16, torch.bfloat16, torch.float32),
               weight_dtype=None) -> torch.dtype:
    dev = devices.resolve(device) if device is not None else None
    chosen = devices.unet_dtype(dev, weight_dtype)
    if chosen in supported_dtypes or devices.settings().unet is not None:
        return chosen
    for dt in supported_dtypes:  # the model's own preference among what the card does
        if (dt == torch.float16 and devices.fp16_ok(dev)) or (dt == torch.bfloat16 and devices.bf16_ok(dev)):
            return dt
    return torch.float32


def unet_manual_cast(weight_dtype, inference_device, supported_dtypes=(torch.float16, torch.bfloat16, torch.float32)):
    """None when the weights can compute in their own dtype, else the dtype to compute in."""
    if weight_dtype in (torch.float32, torch.float64):
        return None
    dev = devices.resolve(inference_device)
    if (weight_dtype == torch.float16 and devices.fp16_ok(dev)) or (weight_dtype == torch.bfloat16 and devices.bf16_ok(dev)):
        return None
    for dt in supported_dtypes:
        if (dt == torch.float16 and devices.fp16_ok(dev)) or (dt == torch.bfloat16 and devices.bf16_ok(dev)):
            return dt
    return torch.float32


def text_encoder_dtype(device=None) -> torch.dtype:
    return devices.text_encoder_dtype()


def vae_dtype(device=None, allowed_dtypes=()) -> torch.dtype:
    dev = devices.resolve(device) if device is not None else None
    if devices.settings().vae is not None:
        return devices.settings().vae
    for dt in allowed_dtypes:
        if (dt == torch.float16 and devices.fp16_ok(dev)) or (dt == torch.bfloat16 and devices.bf16_ok(dev)):
            return dt
    return torch.float32 if allowed_dtypes else devices.vae_dtype(dev)


def supports_cast(device, dtype) -> bool:
    return True


def supports_dtype(device, dtype) -> bool:
    if dtype == torch.float32:
        return True
    if is_device_cpu(device):
        return dtype == torch.bfloat16
    return dtype in (torch.float16, torch.bfloat16)


def cast_to(weight, dtype=None, device=None, non_blocking=False, copy=False, stream=None):
    return weight.to(device=device, dtype=dtype, non_blocking=non_blocking, copy=copy)


def cast_to_device(tensor, device, dtype, copy=False):
    return tensor.to(device=device, dtype=dtype, copy=copy)


def get_torch_device_name(device) -> str:
    dev = devices.resolve(device)
    return f"{dev.torch_device} {dev.device_name}" if dev.kind == "cuda" else "cpu"
