"""The memory manager: which model weights are on the compute device right now.

Models are loaded from their files once (into CPU RAM, or straight onto the GPU) and kept;
before a model runs, `load([model, ...], memory_required)` brings its weights onto the
compute device. When the newcomers plus the working memory they need do not fit, the least
recently used other models are moved back to their offload device (CPU RAM) until they do.
A model that still does not fit is loaded partially: as many layers as the budget allows
stay on the device and the others stream in layer by layer (models/ops.py layers cast their
weight to the input's device and dtype on every call), which is what --lowvram and
--novram (nothing resident) mean.

What counts as a model: a ModelPatcher (its diffusion model), a VAE (first_stage_model),
a CLIP (its text encoders), a ControlNet / T2I-Adapter, a bare nn.Module, or anything with
a `memory_unit()` method returning a Unit. Clones share weights and so share one entry. The
manager holds weak references only: a model the executor's cache drops is forgotten.

ComfyUI facts followed (comfy/model_management.py): models sit on the device while they fit;
free_memory(required, device, keep) unloads until `required` bytes are free; loading asks
for the models' size x 1.1 plus max(minimum inference memory, required + reserve); a partial
load may use max(free - minimum, min(0.4 x free, free - inference minimum)); /free
unload_models unloads everything.
"""
from __future__ import annotations

import gc
import itertools
import logging
import threading
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from models import devices, ops
from models.devices import ComputeDevice, VRAMState

log = logging.getLogger(__name__)

# layers that cast their weights per call, so they may stay on the offload device
STREAMABLE = (ops.Linear, ops.Conv2d, ops.GroupNorm, ops.LayerNorm, ops.Embedding)


@dataclass
class Unit:
    """One model as the manager places it."""
    name: str
    modules: list
    load_device: torch.device
    offload_device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    full_load: bool = False  # never partially loaded (text encoders, as ComfyUI)


def unit_for(obj) -> Unit | None:
    """The Unit of a MODEL / VAE / CLIP / CONTROL_NET object (None when it has no weights)."""
    if obj is None:
        return None
    if isinstance(obj, Unit):
        return obj
    if hasattr(obj, "memory_unit"):
        return obj.memory_unit()
    if isinstance(obj, nn.Module):
        dev = next((p.device for p in obj.parameters()), torch.device("cpu"))
        return Unit(type(obj).__name__, [obj], dev)
    if hasattr(obj, "first_stage_model"):  # VAE
        if obj.first_stage_model is None:
            return None
        return Unit("VAE", [obj.first_stage_model], obj.device, getattr(obj, "offload_device", torch.device("cpu")))
    if hasattr(obj, "encoders") and hasattr(obj, "models"):  # CLIP
        return Unit("CLIP", list(obj.models.values()), getattr(obj, "load_device", torch.device("cpu")),
                    getattr(obj, "offload_device", torch.device("cpu")), full_load=True)
    if isinstance(getattr(obj, "model", None), nn.Module):  # ModelPatcher
        return Unit(type(obj.model).__name__, [obj.model], getattr(obj, "load_device", torch.device("cpu")),
                    getattr(obj, "offload_device", torch.device("cpu")))
    for attr in ("control_model", "t2i_model"):  # ControlNet, T2I-Adapter
        if isinstance(getattr(obj, attr, None), nn.Module):
            return Unit(type(obj).__name__, [getattr(obj, attr)], getattr(obj, "load_device", devices.unet_device()))
    return None


def module_size(module: nn.Module) -> int:
    return sum(t.nbytes for t in module.state_dict().values())


def _leaves(module: nn.Module):
    """Submodules holding tensors directly, in registration order."""
    for m in module.modules():
        if m._parameters or m._buffers:
            yield m


def _own_bytes(m: nn.Module) -> int:
    return sum(t.nbytes for t in itertools.chain(m._parameters.values(), m._buffers.values()) if t is not None)


def _move(m: nn.Module, device: torch.device) -> None:
    if any(t is not None and t.device != device for t in itertools.chain(m._parameters.values(), m._buffers.values())):
        m._apply(lambda t: t.to(device), recurse=False)


class Entry:
    def __init__(self, unit: Unit, device: ComputeDevice):
        self.refs = [weakref.ref(m) for m in unit.modules]
        self.name = unit.name
        self.device = device
        self.offload_device = unit.offload_device
        self.full_load = unit.full_load
        self.size = sum(module_size(m) for m in unit.modules)
        self.resident = self._found_resident(unit.modules)  # bytes on the device now
        device.track(self.resident)
        self.last_used = 0

    def _found_resident(self, mods) -> int:
        """Bytes already on the device (a loader may read a file straight onto the GPU)."""
        target = self.device.torch_device
        if not self.device.managed:
            return self.size  # CPU models live where they are
        if target == self.offload_device:
            return 0  # cannot tell from the tensors (a fake device in tests, or --highvram)
        return sum(_own_bytes(m) for mod in mods for m in _leaves(mod)
                   if all(t is None or t.device == target
                          for t in itertools.chain(m._parameters.values(), m._buffers.values())))

    def modules(self) -> list | None:
        mods = [r() for r in self.refs]
        return None if any(m is None for m in mods) else mods

    @property
    def fully_loaded(self) -> bool:
        return self.resident >= self.size

    def place(self, budget: float) -> int:
        """Put as many weights on the device as `budget` bytes allow (all of them for an
        infinite budget), the rest on the offload device; returns the bytes now resident.
        A budget of None unloads: every weight to the offload device."""
        mods = self.modules()
        if mods is None:
            return 0
        target, rest = self.device.torch_device, self.offload_device
        leaves = [m for mod in mods for m in _leaves(mod)]
        if budget is None:
            for m in leaves:
                _move(m, rest)
            self.device.track(-self.resident)
            self.resident = 0
            return 0
        # layers that cannot stream always go to the device, and count against the budget first
        fixed = [m for m in leaves if not isinstance(m, STREAMABLE)]
        used = sum(_own_bytes(m) for m in fixed)
        for m in fixed:
            _move(m, target)
        for m in leaves:
            if isinstance(m, STREAMABLE):
                size = _own_bytes(m)
                if used + size <= budget:
                    _move(m, target)
                    used += size
                else:
                    _move(m, rest)
        self.device.track(used - self.resident)
        self.resident = used
        return used


class MemoryManager:
    def __init__(self):
        self.entries: dict[tuple, Entry] = {}
        self._clock = itertools.count(1)
        self._lock = threading.RLock()
        self.events: list[tuple[str, str]] = []  # ("load"/"partial"/"unload", name): tests and logs

    # -- bookkeeping ---------------------------------------------------------------------
    def _prune(self) -> None:
        for key, e in list(self.entries.items()):
            if e.modules() is None:
                e.device.track(-e.resident)
                del self.entries[key]

    def _entry(self, unit: Unit) -> Entry:
        key = tuple(id(m) for m in unit.modules)
        e = self.entries.get(key)
        if e is None or e.modules() is None:
            e = self.entries[key] = Entry(unit, devices.resolve(unit.load_device))
        e.last_used = next(self._clock)
        return e

    def register(self, obj) -> Entry | None:
        """Know a freshly loaded model (counted from now on, most recently used)."""
        unit = unit_for(obj)
        if unit is None or not unit.modules:
            return None
        with self._lock:
            self._prune()
            return self._entry(unit)

    def loaded(self, device: ComputeDevice | None = None) -> list[Entry]:
        """Entries with weights on a managed device, most recently used first."""
        self._prune()
        out = [e for e in self.entries.values() if e.resident > 0 and (device is None or e.device is device)]
        return sorted(out, key=lambda e: -e.last_used)

    def is_loaded(self, obj) -> bool:
        unit = unit_for(obj)
        e = self.entries.get(tuple(id(m) for m in unit.modules)) if unit else None
        return e is not None and e.resident > 0

    # -- decisions -------------------------------------------------------------------------
    def free_memory(self, required: float, device: ComputeDevice, keep=()) -> list[Entry]:
        """Unload least recently used models from `device` until `required` bytes are free."""
        with self._lock:
            self._prune()
            if not device.managed:
                return []  # weights on the CPU have nowhere else to go
            keep_ids = {id(e) for e in keep}
            smart = not devices.settings().disable_smart_memory
            candidates = sorted((e for e in self.entries.values()
                                 if e.device is device and e.resident > 0 and id(e) not in keep_ids),
                                key=lambda e: e.last_used)
            unloaded = []
            for e in candidates:
                if smart and device.free_memory() >= required:
                    break
                log.debug("unloading %s", e.name)
                e.place(None)
                unloaded.append(e)
                self.events.append(("unload", e.name))
            if unloaded:
                gc.collect()
                device.empty_cache()
            return unloaded

    def load(self, objs, memory_required: float = 0, force_full: bool = False) -> list[Entry]:
        """Bring these models' weights onto their devices, leaving `memory_required` bytes of
        working memory (plus the reserve) free."""
        with self._lock:
            units = [u for u in (unit_for(o) for o in objs) if u is not None and u.modules]
            entries, seen = [], set()
            for u in units:
                e = self._entry(u)
                if id(e) not in seen:
                    seen.add(id(e))
                    entries.append(e)
            s = devices.settings()
            extra = max(s.minimum_inference_memory, memory_required + s.reserved)
            for device in {id(e.device): e.device for e in entries}.values():
                mine = [e for e in entries if e.device is device]
                if not device.managed:
                    for e in mine:  # models on the CPU simply live there
                        if e.resident < e.size:
                            e.place(float("inf"))
                    continue
                need = sum(e.size - e.resident for e in mine)
                if need > 0 or device.free_memory() < extra:
                    self.free_memory(need * 1.1 + extra, device, keep=mine)
                for e in mine:
                    budget = self._budget(e, device, extra, force_full or e.full_load, s.vram_state)
                    if e.fully_loaded and budget >= e.size:
                        continue
                    before = e.resident
                    e.place(budget)
                    if e.resident != before:
                        self.events.append(("load" if e.fully_loaded else "partial", e.name))
            return entries

    @staticmethod
    def _budget(e: Entry, device: ComputeDevice, extra: float, full: bool, state: VRAMState) -> float:
        if full or state == VRAMState.HIGH_VRAM:
            return float("inf")
        if state == VRAMState.NO_VRAM:
            return 0
        free = device.free_memory() + e.resident
        if free - extra >= e.size:
            return float("inf")
        minimum = devices.settings().minimum_inference_memory
        return max(0, free - extra, min(free * devices.MIN_WEIGHT_MEMORY_RATIO, free - minimum))

    def unload(self, obj) -> None:
        unit = unit_for(obj)
        if unit is None:
            return
        with self._lock:
            e = self.entries.pop(tuple(id(m) for m in unit.modules), None)
            if e is not None and e.modules() is not None and e.resident:
                e.place(None)
                self.events.append(("unload", e.name))

    def unload_all(self) -> None:
        """POST /free {"unload_models": true}: every model back to its offload device."""
        with self._lock:
            self._prune()
            for device in {id(e.device): e.device for e in self.entries.values()}.values():
                self.free_memory(float("inf"), device)
            self.entries = {k: e for k, e in self.entries.items() if e.resident > 0 and e.device.managed}
        soft_empty_cache()

    def free_others(self, keep_objs) -> None:
        """Everything but these models off the device (the out-of-memory retry)."""
        keep = []
        for o in keep_objs:
            u = unit_for(o)
            if u is not None:
                e = self.entries.get(tuple(id(m) for m in u.modules))
                if e is not None:
                    keep.append(e)
        for device in {id(e.device): e.device for e in self.entries.values()}.values():
            self.free_memory(float("inf"), device, keep=keep)


_manager = MemoryManager()


def manager() -> MemoryManager:
    return _manager


def reset() -> MemoryManager:
    """A fresh manager (tests, or after devices.configure with another device)."""
    global _manager
    _manager = MemoryManager()
    return _manager


def load_models(objs, memory_required: float = 0, force_full: bool = False):
    return _manager.load(objs, memory_required, force_full)


def soft_empty_cache() -> None:
    gc.collect()
    devices.compute_device().empty_cache()


def release_all() -> None:
    """What the worker runs for POST /free: models off the GPU, caches returned."""
    _manager.unload_all()


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError)
