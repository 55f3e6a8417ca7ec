"""CLIP text transformers (CLIP ViT-L/14, OpenCLIP ViT-H/14 and ViT-bigG/14) and how ComfyUI
turns 77-token chunks into conditioning with them.

Module names are the Hugging Face CLIPTextModel layout (`text_model.embeddings.
token_embedding`, `text_model.encoder.layers.N.self_attn.q_proj`, `text_model.
final_layer_norm`, `text_projection`), which is what models/checkpoint.py hands over for
every family (OpenCLIP keys converted there) and what the LoRA key maps address.

Weights stay in the dtype they were loaded in (fp16, as ComfyUI keeps text encoders) and
every layer computes in fp32 (models/ops.py casts per call), as ComfyUI 0.8.0 does.

Which hidden state becomes the conditioning (COVERAGE.md §4.5, the oracle's facts):
  clip_l in SD1   last layer, through the final LayerNorm
  clip_h (SD2)    penultimate layer, through the final LayerNorm
  clip_l in SDXL  penultimate layer, no final LayerNorm
  clip_g          penultimate layer, no final LayerNorm
`clip_layer(n)` (CLIPSetLastLayer) selects hidden state n (-1 = last) with the same
LayerNorm rule; an index beyond the encoder's depth falls back to its default "last" output.
The pooled output is always the final-LayerNorm output at the first end token (projected by
`text_projection` where the family uses the projected vector).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models import ops
from models.attention import attention

log = logging.getLogger(__name__)

END_TOKEN = 49407


@dataclass(frozen=True)
class TextEncoderConfig:
    width: int
    layers: int
    heads: int
    ffn: int
    activation: str          # "quick_gelu" (OpenAI CLIP-L) or "gelu" (OpenCLIP)
    vocab: int = 49408
    positions: int = 77
    projection: bool = False  # has text_projection


# The real encoders; reduced-width test files keep the head count (and depth).
KNOWN = {"clip_l": (12, "quick_gelu"), "clip_h": (16, "gelu"), "clip_g": (20, "gelu")}


def config_from_state_dict(name: str, sd: dict) -> TextEncoderConfig:
    """The architecture of a HF-layout text-encoder state dict (`name` picks the activation)."""
    try:
        vocab, width = sd["text_model.embeddings.token_embedding.weight"].shape
        positions = sd["text_model.embeddings.position_embedding.weight"].shape[0]
        ffn = sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
    except KeyError as e:
        raise ValueError(f"{name}: not a CLIP text encoder state dict (no {e.args[0]})") from None
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("text_model.encoder.layers."))
    heads, activation = KNOWN.get(name, (width // 64, "gelu"))
    if heads <= 0 or width % heads:
        heads = max(1, width // 64) if width % 64 == 0 else 1
    return TextEncoderConfig(width, layers, heads, ffn, activation, vocab, positions,
                             projection="text_projection.weight" in sd)


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


class _Attention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (ops.Linear(width, width) for _ in range(4))

    def forward(self, x, mask=None):
        return self.out_proj(attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, mask))


class _MLP(nn.Module):
    def __init__(self, width, ffn, activation):
        super().__init__()
        self.fc1 = ops.Linear(width, ffn)
        self.fc2 = ops.Linear(ffn, width)
        self.act = quick_gelu if activation == "quick_gelu" else F.gelu

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


_OPENCLIP_LAYER_PARTS = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1",
                         "mlp.c_proj": "mlp.fc2", "attn.out_proj": "self_attn.out_proj"}


def openclip_layer_to_hf(rest: str, value: torch.Tensor, base: str) -> dict[str, torch.Tensor]:
    """One tensor of an OpenCLIP `transformer.resblocks.N.<rest>` as EncoderLayer keys under
    `base` (e.g. "text_model.encoder.layers.N."); the fused in_proj is split into q, k, v."""
    if rest.startswith("attn.in_proj_"):
        kind = rest[len("attn.in_proj_"):]
        return {f"{base}self_attn.{name}.{kind}": part.contiguous()
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0))}
    part, suffix = rest.rsplit(".", 1)
    return {base + _OPENCLIP_LAYER_PARTS.get(part, part) + "." + suffix: value}


class EncoderLayer(nn.Module):
    """One pre-norm CLIP transformer layer in the Hugging Face key layout, shared by the text
    encoders and the vision towers (cfg needs width, heads, ffn and activation)."""

    def __init__(self, cfg):
        super().__init__()
        self.layer_norm1 = ops.LayerNorm(cfg.width)
        self.self_attn = _Attention(cfg.width, cfg.heads)
        self.layer_norm2 = ops.LayerNorm(cfg.width)
        self.mlp = _MLP(cfg.width, cfg.ffn, cfg.activation)

    def forward(self, x, mask=None):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class _Embeddings(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.token_embedding = ops.Embedding(cfg.vocab, cfg.width)
        self.position_embedding = ops.Embedding(cfg.positions, cfg.width)


class _Encoder(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.layers))


class _TextModel(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)
        self.final_layer_norm = ops.LayerNorm(cfg.width)


class ClipTextModel(nn.Module):
    """One CLIP text transformer in the HF layout."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.config = cfg
        self.text_model = _TextModel(cfg)
        if cfg.projection:
            self.text_projection = ops.Linear(cfg.width, cfg.width, bias=False)

    @property
    def num_layers(self) -> int:
        return self.config.layers

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_model.embeddings.token_embedding(ids, out_dtype=torch.float32)

    def forward(self, embeds: torch.Tensor, pooled_index: list[int], hidden_layer: int | None = None):
        """embeds: [B, L, D] fp32 token vectors (positions not yet added).

        Returns (last, hidden, pooled, projected): the final-LayerNorm output of the last
        layer, the raw output of layer `hidden_layer` (None if not asked), the final-LN
        output at pooled_index per row, and its projection (None without text_projection)."""
        x = embeds + self.text_model.embeddings.position_embedding.weight.to(embeds)
        n = x.shape[1]
        causal = torch.full((n, n), -torch.finfo(x.dtype).max, dtype=x.dtype, device=x.device).triu_(1)
        layers = self.text_model.encoder.layers
        if hidden_layer is not None and hidden_layer < 0:
            hidden_layer += len(layers)
        hidden = None
        for i, layer in enumerate(layers):
            x = layer(x, causal)
            if i == hidden_layer:
                hidden = x
        x = self.text_model.final_layer_norm(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), torch.tensor(pooled_index, device=x.device)]
        projected = self.text_projection(pooled) if self.config.projection else None
        return x, hidden, pooled, projected


def build_text_model(name: str, state_dict: dict, device=None, dtype: torch.dtype | None = torch.float16) -> ClipTextModel:
    """A ClipTextModel holding the tensors of a HF-layout state dict (converted to `dtype`)."""
    cfg = config_from_state_dict(name, state_dict)
    with torch.device("meta"):
        model = ClipTextModel(cfg)
    own = model.state_dict().keys()
    tensors = {}
    for k, v in state_dict.items():
        if k in own:
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
            tensors[k] = v.to(device) if device is not None else v
    return ops.load_into(model, tensors, strict=False, what=f"{name} text encoder").eval()


@dataclass
class LayerChoice:
    """Which output of an encoder is the conditioning (ComfyUI's SDClipModel options)."""
    hidden: int | None          # None = the last layer through the final LayerNorm
    layer_norm_hidden: bool     # whether a chosen hidden state goes through the final LayerNorm
    projected_pooled: bool


class TextEncoder:
    """A ClipTextModel with its special tokens and output rules: chunks -> (cond, pooled)."""

    def __init__(self, name: str, model: ClipTextModel, default: LayerChoice, pad_token: int):
        self.name = name
        self.model = model
        self.default = default
        self.pad_token = pad_token

    def choice(self, layer_idx: int | None, unprojected: bool = False) -> LayerChoice:
        c = self.default
        hidden = c.hidden
        if layer_idx is not None:
            hidden = None if abs(layer_idx) > self.model.num_layers else layer_idx
        return LayerChoice(hidden, c.layer_norm_hidden, c.projected_pooled and not unprojected)

    def _embed_chunk(self, chunk, device) -> tuple[torch.Tensor, int]:
        """Token vectors of one chunk and its pooled position. As in ComfyUI, that is the
        number of attended entries - 1: integer tokens up to the first end token plus the
        embedding vectors, i.e. the first end token's position when embeddings precede it.
        Embedding vectors of another width are dropped and pad tokens appended instead."""
        ids = [int(t) for t, _ in chunk if not torch.is_tensor(t)]
        attended = 0
        for t in ids:
            attended += 1
            if t == END_TOKEN:
                break
        vectors = self.model.embed_tokens(torch.tensor([ids], dtype=torch.long, device=device))[0]
        if len(ids) == len(chunk):
            return vectors.unsqueeze(0), attended - 1
        width = vectors.shape[-1]
        rows, i, kept, dropped = [], 0, 0, 0
        for t, _ in chunk:
            if not torch.is_tensor(t):
                rows.append(vectors[i:i + 1])
                i += 1
                continue
            emb = t.reshape(-1, t.shape[-1]).to(device=device, dtype=torch.float32)
            if emb.shape[-1] != width:
                log.warning("embedding of width %d ignored by %s (width %d)", emb.shape[-1], self.name, width)
                dropped += emb.shape[0]
                continue
            rows.append(emb)
            kept += emb.shape[0]
        if dropped:
            pad = torch.tensor([[self.pad_token] * dropped], dtype=torch.long, device=device)
            rows.append(self.model.embed_tokens(pad)[0])
        return torch.cat(rows).unsqueeze(0), attended + kept - 1

    @torch.no_grad()
    def encode_chunks(self, chunks, choice: LayerChoice, device=None):
        """[[(token, weight), ...77], ...] -> (cond [1, 77*k, D], pooled [1, D] of the first chunk)."""
        device = device or self.model.text_model.final_layer_norm.weight.device
        has_weights = any(w != 1.0 for chunk in chunks for _, w in chunk)
        batch = list(chunks)
        if has_weights or not batch:
            length = max((len(c) for c in batch), default=77)
            empty = [49406, END_TOKEN] + [self.pad_token] * (length - 2)
            batch.append([(t, 1.0) for t in empty])
        embedded = [self._embed_chunk(c, device) for c in batch]
        embeds = torch.cat([e for e, _ in embedded])
        last, hidden, pooled, projected = self.model(embeds, [i for _, i in embedded], choice.hidden)
        if choice.hidden is None:
            z = last
        else:
            z = self.model.text_model.final_layer_norm(hidden) if choice.layer_norm_hidden else hidden
        z = z.float()
        pooled_out = projected if (choice.projected_pooled and projected is not None) else pooled
        first_pooled = pooled_out[0:1].float()
        if not chunks:
            return z[-1:], first_pooled
        out = []
        for k, chunk in enumerate(chunks):
            zk = z[k:k + 1].clone()
            if has_weights:
                z_empty = z[-1]
                for j, (_, w) in enumerate(chunk):
                    if w != 1.0:
                        zk[0, j] = (zk[0, j] - z_empty[j]) * w + z_empty[j]
            out.append(zk)
        return torch.cat(out, dim=-2), first_pooled
