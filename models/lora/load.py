"""Turn a LoRA file's tensors into patches: {(component, weight key): Adapter}."""
from __future__ import annotations

import logging

from models.lora.adapters import READERS, Adapter

log = logging.getLogger(__name__)


def lora_patches(lora: dict, key_map: dict[str, tuple], log_missing: bool = True) -> dict[tuple, Adapter]:
    patches: dict[tuple, Adapter] = {}
    used: set[str] = set()
    for name, target in key_map.items():
        alpha_key, dora_key = f"{name}.alpha", f"{name}.dora_scale"
        alpha = lora[alpha_key].item() if alpha_key in lora else None
        dora = lora.get(dora_key)
        found = False
        for reader in READERS:
            adapter = reader(name, lora, alpha, dora)
            if adapter is not None:
                patches[target] = adapter
                used.update(adapter.keys)
                found = True
                break
        if found:
            used.update(k for k in (alpha_key, dora_key) if k in lora)
        component, key = target
        bias_target = (component, key[:-len(".weight")] + ".bias") if key.endswith(".weight") else None
        for suffix, bias in ((".w_norm", False), (".b_norm", True), (".diff", False), (".diff_b", True)):
            k = name + suffix
            if k in lora and (not bias or bias_target):
                patches[bias_target if bias else target] = Adapter("diff", {"diff": lora[k]}, keys={k})
                used.add(k)
        if name + ".set_weight" in lora:
            patches[target] = Adapter("set", {"set": lora[name + ".set_weight"]}, keys={name + ".set_weight"})
            used.add(name + ".set_weight")
    if log_missing:
        for k in lora:
            if k not in used:
                log.warning("lora key not loaded: %s", k)
    return patches
