"""Style models (STYLE_MODEL): networks that turn a CLIP-vision hidden state into extra
cross-attention tokens appended to a text conditioning.

Two file kinds, told apart by their keys as ComfyUI does:
* the T2I-Adapter style model (`style_embedding`, `transformer_layes.N.*` [sic], `ln_pre`,
  `ln_post`, `proj`): learned query tokens appended to the ViT-L hidden states, a small
  OpenCLIP-style transformer (8 heads, QuickGELU), and the query outputs projected to the
  text width (1024 -> 768, 8 tokens in the public file);
* Flux Redux (`redux_up`, `redux_down`): a two-layer SiLU MLP from SigLIP width to T5 width.
Sizes are read from the shapes.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from models import ops
from models.attention import attention
from models.state_dict import ModelFileError, as_source

STYLE_HEADS = 8


class _ResidualAttentionBlock(nn.Module):
    """OpenCLIP block; keys attn.in_proj_weight/bias, attn.out_proj, ln_1, ln_2, mlp.c_fc, mlp.c_proj."""

    def __init__(self, width):
        super().__init__()
        self.attn = nn.Module()
        self.attn.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.attn.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.attn.out_proj = ops.Linear(width, width)
        self.ln_1 = nn.LayerNorm(width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Module()
        self.mlp.c_fc = ops.Linear(width, width * 4)
        self.mlp.c_proj = ops.Linear(width * 4, width)

    def _attention(self, x):
        w, b = ops.cast_like(self.attn.in_proj_weight, x), ops.cast_like(self.attn.in_proj_bias, x)
        q, k, v = F.linear(x, w, b).chunk(3, dim=-1)
        return self.attn.out_proj(attention(q, k, v, STYLE_HEADS))

    def forward(self, x):
        x = x + self._attention(_ln(self.ln_1, x))
        h = self.mlp.c_fc(_ln(self.ln_2, x))
        return x + self.mlp.c_proj(h * torch.sigmoid(1.702 * h))


def _ln(norm: nn.LayerNorm, x):
    """LayerNorm computed in fp32 (the original casts fp16 inputs up)."""
    out = F.layer_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps)
    return out.to(x.dtype)


class StyleAdapter(nn.Module):
    def __init__(self, width: int, context_dim: int, layers: int, tokens: int):
        super().__init__()
        self.num_token = tokens
        self.style_embedding = nn.Parameter(torch.empty(1, tokens, width))
        self.transformer_layes = nn.Sequential(*[_ResidualAttentionBlock(width) for _ in range(layers)])
        self.ln_pre = nn.LayerNorm(width)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, context_dim))

    def forward(self, hidden):
        """CLIP-vision hidden states [N, T, width] -> style tokens [N, tokens, context_dim]."""
        style = ops.cast_like(self.style_embedding, hidden).expand(hidden.shape[0], -1, -1)
        x = _ln(self.ln_pre, torch.cat([hidden, style], dim=1))
        for block in self.transformer_layes:  # batch-first here; attention is per sequence either way
            x = block(x)
        x = _ln(self.ln_post, x[:, -self.num_token:, :])
        return x @ ops.cast_like(self.proj, x)


class ReduxImageEncoder(nn.Module):
    def __init__(self, redux_dim: int, txt_dim: int):
        super().__init__()
        self.redux_up = ops.Linear(redux_dim, txt_dim * 3)
        self.redux_down = ops.Linear(txt_dim * 3, txt_dim)

    def forward(self, hidden):
        return self.redux_down(F.silu(self.redux_up(hidden)))


class StyleModel:
    """STYLE_MODEL: get_cond(clip_vision_output) -> extra tokens [N, tokens, dim]."""

    def __init__(self, model: nn.Module, kind: str):
        self.model = model
        self.kind = kind

    def get_cond(self, clip_vision_output) -> torch.Tensor:
        hidden = clip_vision_output.last_hidden_state
        with torch.no_grad():
            return self.model(hidden.float())


def load_style_model(source) -> StyleModel:
    src = as_source(source)
    try:
        keys = src.keys()
        sd = src.read(keys)
    finally:
        if src is not source:
            src.close()
    if "style_embedding" in sd:
        _, tokens, width = sd["style_embedding"].shape
        context_dim = sd["proj"].shape[1] if "proj" in sd else width
        layers = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"transformer_layes\.(\d+)\.", k))), default=-1)
        if width % STYLE_HEADS:
            raise ModelFileError(f"style model width {width} is not divisible by {STYLE_HEADS} heads")
        with torch.device("meta"):
            model = StyleAdapter(width, context_dim, layers, tokens)
        kind = "t2i_style"
    elif "redux_down.weight" in sd and "redux_up.weight" in sd:
        txt3, redux_dim = sd["redux_up.weight"].shape
        with torch.device("meta"):
            model = ReduxImageEncoder(redux_dim, txt3 // 3)
        kind = "flux_redux"
    else:
        from models.detect import describe_keys
        raise ModelFileError(f"not a style model: neither a T2I-Adapter style model (style_embedding) nor "
                             f"Flux Redux (redux_down.weight) ({describe_keys(as_source(sd))})")
    try:
        ops.load_into(model, {k: v.float() if v.is_floating_point() else v for k, v in sd.items()},
                      what="style model")
    except ValueError as e:
        raise ModelFileError(str(e)) from e
    return StyleModel(model.eval(), kind)
