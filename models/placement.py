"""Giving freshly loaded models their devices and dtypes (what the loader nodes call).

A loader reads a file once; these functions decide where the result lives and in which
precision, using models/devices.py's policy, and register it with the memory manager so it
takes part in LRU eviction from the start:

    patcher = place_unet(diffusion_model)      # ModelPatcher with load/offload devices
    place_vae(vae); place_clip(clip); place_controlnet(control); place_clip_vision(cv)

`initial_device(nbytes)` is where a loader should read the tensors to: straight onto the GPU
(in the target dtype, no second copy in RAM) when the model fits with room to spare,
else CPU RAM (the manager moves it when it runs). ComfyUI's rule: the GPU with --highvram,
the CPU with --novram or --disable-smart-memory, else the GPU when it fits.
"""
from __future__ import annotations

import os

import torch

from models import devices, memory
from models.devices import VRAMState


def initial_device(nbytes: int) -> torch.device:
    dev = devices.compute_device()
    s = devices.settings()
    if not dev.managed or dev.torch_device.type == "cpu":
        return torch.device("cpu")
    if s.vram_state in (VRAMState.HIGH_VRAM, VRAMState.SHARED):
        return dev.torch_device
    if s.disable_smart_memory or s.vram_state in (VRAMState.NO_VRAM, VRAMState.LOW_VRAM):
        return torch.device("cpu")
    if nbytes * 1.2 + s.minimum_inference_memory < dev.free_memory():
        return dev.torch_device
    return torch.device("cpu")


def file_device(path: str, dtype: torch.dtype | None = None) -> torch.device:
    """initial_device for a model file (its size, scaled when the dtype widens)."""
    size = os.path.getsize(path)
    if dtype is not None and devices.dtype_size(dtype) > 2:
        size *= 2
    return initial_device(size)


def place_unet(model):
    """MODEL for a DiffusionModel: runs on the compute device, rests on the offload device."""
    from models.model_patcher import ModelPatcher
    patcher = ModelPatcher(model, devices.unet_device(), devices.offload_device())
    memory.manager().register(patcher)
    return patcher


def place_vae(vae, stored: torch.dtype | None = None):
    """The VAE's device and dtype: bf16 or fp32 on a GPU (fp16 overflows), fp32 compute on
    the CPU with half-precision weights kept as stored."""
    if getattr(vae, "first_stage_model", None) is None:
        return vae
    stored = stored or next(vae.first_stage_model.parameters()).dtype
    dev = devices.resolve(devices.vae_device())
    weight, compute = devices.precision("vae", stored, dev)
    model = vae.first_stage_model
    if next(model.parameters()).dtype != weight:
        model.to(weight)
    vae.vae_dtype = compute
    vae.device = dev.torch_device
    vae.offload_device = devices.offload_device()
    memory.manager().register(vae)
    return vae


def place_clip(clip):
    """Text encoders run on text_encoder_device() (the GPU unless --lowvram/--novram),
    fp16 weights, fp32 compute."""
    if clip is None:
        return clip
    clip.load_device = devices.text_encoder_device()
    clip.offload_device = devices.offload_device()
    memory.manager().register(clip)
    return clip


def place_controlnet(control):
    """ControlNets run where the UNet runs."""
    if control is not None:
        control.load_device = devices.unet_device()
        memory.manager().register(control)
    return control


def place_clip_vision(clip_vision):
    """CLIP vision runs where the text encoders run (ComfyUI: text_encoder_device), weights kept as
    loaded, and takes part in LRU eviction like the other models."""
    if clip_vision is not None:
        clip_vision.load_device = devices.text_encoder_device()
        clip_vision.offload_device = devices.offload_device()
        memory.manager().register(clip_vision)
    return clip_vision
