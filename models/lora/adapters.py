"""Weight adapters found in LoRA files, each able to compute its weight difference.

One function per file format reads the tensors of one target (its key prefix `x`) and
returns an adapter, or None when the format does not match:
  LoRA / LoCon (up, down, optional Tucker mid; kohya, diffusers, PEFT, transformers names),
  LoHa (Hadamard product of two low-rank pairs, optional CP cores),
  LoKr (Kronecker product, factors full or low-rank),
  full differences (.diff, .diff_b, norm diffs) and replacements (.set_weight).
The scale of low-rank adapters is alpha / rank (1 when the file has no alpha).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

# (up, down) key suffix pairs of low-rank factors, in the order formats are tried.
LORA_NAMES = [
    (".lora_up.weight", ".lora_down.weight"),
    ("_lora.up.weight", "_lora.down.weight"),
    (".lora_B.weight", ".lora_A.weight"),
    (".lora.up.weight", ".lora.down.weight"),
    (".lora_B", ".lora_A"),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
    (".lora_B.default.weight", ".lora_A.default.weight"),
]


@dataclass
class Adapter:
    kind: str                 # "lora" | "loha" | "lokr" | "diff" | "set"
    tensors: dict             # the factors, by role
    alpha: float | None = None
    dora_scale: torch.Tensor | None = None
    reshape: list | None = None
    keys: set = field(default_factory=set)  # file keys this adapter consumed

    def difference(self, shape, device, dtype=torch.float32) -> torch.Tensor:
        """The (alpha/rank-scaled) weight difference, shaped like the target weight."""
        t = {k: (v.to(device=device, dtype=dtype) if isinstance(v, torch.Tensor) else v)
             for k, v in self.tensors.items()}
        if self.kind == "lora":
            up, down, mid = t["up"], t["down"], t.get("mid")
            if mid is not None:  # LoCon with a Tucker core: fold the core into `down`
                final = [down.shape[1], down.shape[0], mid.shape[2], mid.shape[3]]
                down = torch.mm(down.transpose(0, 1).flatten(start_dim=1),
                                mid.transpose(0, 1).flatten(start_dim=1)).reshape(final).transpose(0, 1)
            diff = torch.mm(up.flatten(start_dim=1), down.flatten(start_dim=1))
            scale = self.alpha / down.shape[0] if self.alpha is not None else 1.0
            return (diff * scale).reshape(shape)
        if self.kind == "loha":
            if t.get("t1") is not None:
                m1 = torch.einsum("i j k l, j r, i p -> p r k l", t["t1"], t["w1b"], t["w1a"])
                m2 = torch.einsum("i j k l, j r, i p -> p r k l", t["t2"], t["w2b"], t["w2a"])
            else:
                m1, m2 = t["w1a"] @ t["w1b"], t["w2a"] @ t["w2b"]
            scale = self.alpha / t["w1b"].shape[0] if self.alpha is not None else 1.0
            return (m1 * m2 * scale).reshape(shape)
        if self.kind == "lokr":
            rank = None
            w1 = t.get("w1")
            if w1 is None:
                rank = t["w1b"].shape[0]
                w1 = t["w1a"] @ t["w1b"]
            w2 = t.get("w2")
            if w2 is None:
                rank = t["w2b"].shape[0]
                if t.get("t2") is None:
                    w2 = t["w2a"] @ t["w2b"]
                else:
                    w2 = torch.einsum("i j k l, j r, i p -> p r k l", t["t2"], t["w2b"], t["w2a"])
            if w2.ndim == 4:
                w1 = w1.unsqueeze(2).unsqueeze(2)
            scale = self.alpha / rank if (self.alpha is not None and rank is not None) else 1.0
            return (torch.kron(w1, w2) * scale).reshape(shape)
        if self.kind == "diff":
            return t["diff"].reshape(shape)
        raise ValueError(f"adapter kind {self.kind} has no difference")

    def apply(self, weight: torch.Tensor, strength: float, compute_dtype=torch.float32) -> torch.Tensor:
        """The patched weight (a new tensor in weight's dtype)."""
        if self.kind == "set":
            return self.tensors["set"].to(weight)
        w = weight.to(compute_dtype)
        if self.reshape is not None:
            w = _pad_to(w, self.reshape)
        diff = self.difference(w.shape, w.device, compute_dtype)
        if self.dora_scale is not None:
            return _dora(self.dora_scale.to(w), w, diff, strength).to(weight.dtype)
        return (w + strength * diff).to(weight.dtype)


def _pad_to(t: torch.Tensor, shape) -> torch.Tensor:
    out = torch.zeros(shape, dtype=t.dtype, device=t.device)
    out[tuple(slice(0, d) for d in t.shape)] = t
    return out


def _dora(scale: torch.Tensor, weight: torch.Tensor, diff: torch.Tensor, strength: float) -> torch.Tensor:
    """Weight-decomposed LoRA: renormalise the patched weight's columns (or rows) to `scale`."""
    calc = weight + diff
    if scale.shape[0] == calc.shape[0]:
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True)
        norm = norm.reshape(weight.shape[0], *[1] * (weight.dim() - 1))
    else:
        norm = calc.transpose(0, 1).reshape(calc.shape[1], -1).norm(dim=1, keepdim=True)
        norm = norm.reshape(calc.shape[1], *[1] * (calc.dim() - 1)).transpose(0, 1)
    calc = calc * (scale / (norm + torch.finfo(weight.dtype).eps))
    if strength != 1.0:
        return weight + strength * (calc - weight)
    return calc


def read_lora(x, sd, alpha, dora):
    for up_suffix, down_suffix in LORA_NAMES:
        up_key = x + up_suffix
        if up_key not in sd:
            continue
        down_key = x + down_suffix
        keys = {up_key, down_key}
        tensors = {"up": sd[up_key], "down": sd[down_key]}
        if up_suffix == ".lora_up.weight" and x + ".lora_mid.weight" in sd:
            tensors["mid"] = sd[x + ".lora_mid.weight"]
            keys.add(x + ".lora_mid.weight")
        reshape = None
        if x + ".reshape_weight" in sd:
            try:
                reshape = sd[x + ".reshape_weight"].tolist()
                keys.add(x + ".reshape_weight")
            except Exception:  # not a list-like tensor: ignore, as ComfyUI does
                pass
        return Adapter("lora", tensors, alpha, dora, reshape, keys)
    return None


def read_loha(x, sd, alpha, dora):
    if x + ".hada_w1_a" not in sd:
        return None
    names = {"w1a": ".hada_w1_a", "w1b": ".hada_w1_b", "w2a": ".hada_w2_a", "w2b": ".hada_w2_b"}
    if x + ".hada_t1" in sd:
        names.update(t1=".hada_t1", t2=".hada_t2")
    return Adapter("loha", {k: sd[x + s] for k, s in names.items()}, alpha, dora,
                   keys={x + s for s in names.values()})


def read_lokr(x, sd, alpha, dora):
    names = {"w1": ".lokr_w1", "w2": ".lokr_w2", "w1a": ".lokr_w1_a", "w1b": ".lokr_w1_b",
             "w2a": ".lokr_w2_a", "w2b": ".lokr_w2_b", "t2": ".lokr_t2"}
    found = {k: sd[x + s] for k, s in names.items() if x + s in sd}
    if not any(k in found for k in ("w1", "w2", "w1a", "w2a")):
        return None
    return Adapter("lokr", found, alpha, dora, keys={x + names[k] for k in found})


READERS = [read_lora, read_loha, read_lokr]
