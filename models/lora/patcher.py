"""Applying patches in place, with a record of the original weights.

A WeightPatcher holds the modules of one loaded model by component ("unet", "clip_l",
...). `apply(patch_list)` brings the weights to exactly the requested set of patches:
weights patched before but not requested now are restored from the backup, so switching
LoRAs (or removing them) never reloads the checkpoint. Patch math runs in fp32 and is cast
back to the weight's dtype.
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
    def __init__(self, components: dict[str, torch.nn.Module]):
        self.components = components
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

    @staticmethod
    def signature(patch_list) -> tuple:
        return tuple((id(patches), float(strength)) for patches, strength in patch_list)

    @torch.no_grad()
    def apply(self, patch_list: list[tuple[dict[tuple, Adapter], float]]) -> None:
        """patch_list: [(patches from one LoRA, strength), ...] in application order."""
        sig = self.signature(patch_list)
        if sig == self.applied_signature:
            return
        self.restore()
        by_target: dict[tuple, list] = {}
        for patches, strength in patch_list:
            if strength == 0:
                continue
            for target, adapter in patches.items():
                by_target.setdefault(target, []).append((adapter, strength))
        for target, adapters in by_target.items():
            param = self._param(target)
            if param is None:
                continue
            self.backup[target] = param.detach().clone()
            weight = param.detach()
            for adapter, strength in adapters:
                weight = adapter.apply(weight, strength)
            param.copy_(weight)
        self.applied_signature = sig

    @torch.no_grad()
    def restore(self) -> None:
        for target, original in self.backup.items():
            self._param(target).copy_(original)
        self.backup.clear()
        self.applied_signature = ()
