"""Applying patches in place, with a record of the original weights.

A WeightPatcher holds the modules of one loaded model by component ("unet", "clip_l",
...). `apply(patch_list)` brings the weights to exactly the requested set of patches:
weights patched before but not requested now are restored from the backup, so switching
LoRAs (or removing them) never reloads the checkpoint. Patch math runs in fp32 across all
patches of a weight and is cast back to the weight's dtype once (ComfyUI's calculate_weight).

A patch list entry is (patches, strength_patch[, strength_model]): per weight, ComfyUI's order is
`w = w * strength_model`, then `w = adapter(w, strength_patch)` — how model merging expresses
`ratio * w1 + (1 - ratio) * w2` with an adapter that reads another model's weight.
"""
from __future__ import annotations

import torch

from models.lora.adapters import Adapter


def _get_param(module: torch.nn.Module, key: str) -> torch.Tensor:
    obj = module
    *path, leaf = key.split(".")
    for p in path:
        obj = getattr(obj, p)
    return getattr(obj, leaf)


class WeightPatcher:
    def __init__(self, components: dict[str, torch.nn.Module], compute_dtypes: dict | None = None):
        self.components = components
        # component -> dtype it computes in. A weight kept narrower only to save memory (fp16/bf16
        # storage of an fp32-computing model) is patched into that dtype: ComfyUI holds such a
        # model's weights in the compute dtype, so its patched weights are never rounded to fp16.
        self.compute_dtypes = compute_dtypes or {}
        self.backup: dict[tuple, torch.Tensor] = {}
        self.applied_signature: tuple = ()

    def _param(self, target: tuple) -> torch.Tensor | None:
        component, key = target
        module = self.components.get(component)
        if module is None:
            return None
        try:
            return _get_param(module, key)
        except AttributeError:
            return None

    def original(self, target: tuple) -> torch.Tensor | None:
        """The unpatched weight of a target (its backup while patched), without copying."""
        saved = self.backup.get(target)
        return saved if saved is not None else self._param(target)

    def keys(self, component: str) -> set:
        """State-dict keys of one component (cached: they never change for a loaded model)."""
        cache = self.__dict__.setdefault("_keys", {})
        if component not in cache:
            module = self.components.get(component)
            cache[component] = set(module.state_dict().keys()) if module is not None else set()
        return cache[component]

    @staticmethod
    def entries(patch_list) -> list[tuple[dict, float, float]]:
        """(patches, strength_patch, strength_model) for entries of two or three items."""
        return [(e[0], float(e[1]), float(e[2]) if len(e) > 2 else 1.0) for e in patch_list]

    @staticmethod
    def signature(patch_list) -> tuple:
        return tuple((id(p), s, m) for p, s, m in WeightPatcher.entries(patch_list))

    @torch.no_grad()
    def apply(self, patch_list: list[tuple]) -> None:
        """patch_list: [(patches from one LoRA or merge, strength_patch[, strength_model]), ...]
        in application order."""
        sig = self.signature(patch_list)
        if sig == self.applied_signature:
            return
        self.restore()
        by_target: dict[tuple, list] = {}
        for patches, strength, strength_model in self.entries(patch_list):
            if strength == 0 and strength_model == 1:
                continue
            for target, adapter in patches.items():
                by_target.setdefault(target, []).append((adapter, strength, strength_model))
        for target, adapters in by_target.items():
            param = self._param(target)
            if param is None:
                continue
            widen = self.compute_dtypes.get(target[0])
            if widen == torch.float32 and param.dtype in (torch.float16, torch.bfloat16):
                self.backup[target] = param.data  # the stored tensor itself: it is swapped, not written
                param.data = patched_weight(param.detach(), adapters, keep_fp32=True)
                continue
            self.backup[target] = param.detach().clone()
            param.copy_(patched_weight(param.detach(), adapters))
        self.applied_signature = sig
        # The patch dicts stay referenced while applied, so their ids in the signature stay unique.
        self._applied_refs = [e[0] for e in patch_list]

    @torch.no_grad()
    def restore(self) -> None:
        for target, original in self.backup.items():
            param = self._param(target)
            if param.dtype != original.dtype:  # widened while patched: put the stored tensor back
                param.data = original.to(param.device)  # the model may have moved while patched
            else:
                param.copy_(original)
        self.backup.clear()
        self.applied_signature = ()


def patched_weight(weight: torch.Tensor, adapters, keep_fp32: bool = False) -> torch.Tensor:
    """`weight` with [(adapter, strength_patch, strength_model), ...] applied in fp32 (one
    rounding to weight's dtype at the end unless keep_fp32). A zero strength_patch still scales
    by strength_model, as in ComfyUI."""
    w = weight.to(torch.float32, copy=True)
    for adapter, strength, strength_model in adapters:
        if strength_model != 1.0:
            w = w * strength_model
        if strength != 0.0 or adapter.kind == "set":
            w = adapter.apply(w, strength)
    return w if keep_fp32 else w.to(weight.dtype)
