"""Weights taken from another model, as patches (model merging).

ComfyUI merges models without building a third one: `model2.get_key_patches()` hands out, per
weight, "model2's weight with model2's own patches", and `model1.add_patches(kp, strength_patch,
strength_model)` turns that into `w1 * strength_model + strength_patch * w2'` when model1's
weights are patched for sampling (ModelMergeSimple: strength_model = ratio, strength_patch =
1 - ratio). comfyd does the same with a lazy adapter: nothing is copied when the merge node
runs; model2's unpatched weight is read (its backup if model2 is patched at that moment) when
model1's weights are patched, and restored like any LoRA when the next prompt wants others.

Patch values in ComfyUI's tuple forms (`(diff,)`, `("diff", (diff,))`, `("set", (w,))`, and the
lists of get_key_patches) are converted so custom nodes that build them keep working.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from models.lora.adapters import Adapter
from models.lora.patcher import WeightPatcher, patched_weight

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ModelWeight:
    """`strength * (another model's weight, with that model's patches)` added to a weight."""
    source: WeightPatcher | None         # the other model's weights (None: `fixed` is the weight)
    target: tuple                        # (component, key) in the other model
    own_patches: list                    # the other model's patch list when it was taken
    fixed: torch.Tensor | None = None
    kind: str = "model"

    def weight(self) -> torch.Tensor | None:
        """The other model's (patched) weight in fp32."""
        base = self.fixed if self.fixed is not None else self.source.original(self.target)
        if base is None:
            return None
        adapters = [(p[self.target], s, m) for p, s, m in WeightPatcher.entries(self.own_patches) if self.target in p]
        return patched_weight(base.detach(), adapters, keep_fp32=True)

    def apply(self, weight: torch.Tensor, strength: float, compute_dtype=torch.float32) -> torch.Tensor:
        other = self.weight()
        if other is None:
            return weight
        if other.shape != weight.shape:  # ComfyUI leaves the weight (already scaled) as it is
            log.warning("WARNING SHAPE MISMATCH %s WEIGHT NOT MERGED %s != %s", self.target[1],
                        tuple(other.shape), tuple(weight.shape))
            return weight
        return (weight.to(compute_dtype) + strength * other.to(weight.device, compute_dtype)).to(weight.dtype)


def key_patches(weights: WeightPatcher, own_patches: list, component: str, prefix: str = "") -> dict:
    """{prefix + key: ModelWeight} for every floating-point weight of one component."""
    snapshot = list(own_patches)
    module = weights.components[component]
    return {prefix + k: ModelWeight(weights, (component, k), snapshot)
            for k, v in module.state_dict(keep_vars=True).items() if v.is_floating_point()}


def _from_comfy_patch(entry) -> tuple | None:
    """One of ComfyUI's (strength_patch, value, strength_model, offset, function) tuples."""
    if isinstance(entry, tuple) and len(entry) >= 3 and entry[3:4] in ((), (None,)):
        adapter = as_adapter(entry[1])
        if adapter is not None:
            return adapter, float(entry[0]), float(entry[2])
    return None


def as_adapter(value):
    """An adapter from a patch value in comfyd's or ComfyUI's forms; None when unknown."""
    if isinstance(value, (Adapter, ModelWeight)):
        return value
    if isinstance(value, list) and value and isinstance(value[0], tuple) and isinstance(value[0][0], torch.Tensor):
        # get_key_patches of a ComfyUI-style object: [(weight, convert_func), *its patches]
        rest = [_from_comfy_patch(e) for e in value[1:]]
        own = [({("x", "w"): a}, s, m) for a, s, m in (r for r in rest if r is not None)]
        return ModelWeight(None, ("x", "w"), own, fixed=value[0][0])
    if isinstance(value, tuple):
        if len(value) == 1 and isinstance(value[0], torch.Tensor):
            return Adapter("diff", {"diff": value[0]})
        if len(value) == 2 and isinstance(value[0], str):
            kind, v = value
            v = v if isinstance(v, tuple) else (v,)
            if kind == "diff" and isinstance(v[0], torch.Tensor):
                return Adapter("diff", {"diff": v[0]})
            if kind == "set" and isinstance(v[0], torch.Tensor):
                return Adapter("set", {"set": v[0]})
    return None


def normalise_patches(patches: dict, weights: WeightPatcher, key_target) -> dict:
    """{target: adapter} for the entries of an add_patches dict that name an existing weight;
    key_target maps a key as given (tuple or ComfyUI string) to (component, key) or None."""
    out = {}
    for key, value in patches.items():
        if isinstance(key, tuple):  # comfyd's (component, key); ComfyUI's (key, offset[, fn]) is not supported
            target = key if len(key) == 2 and all(isinstance(k, str) for k in key) else None
            if target is None:
                log.warning("patches with an offset are not supported: %s", key)
        else:
            target = key_target(key)
        if target is None or target[1] not in weights.keys(target[0]):
            continue
        adapter = as_adapter(value)
        if adapter is None:
            log.warning("patch type not recognized %s", key)
            continue
        out[key] = (target, adapter)
    return out
