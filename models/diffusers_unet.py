"""diffusers-format UNet files (`conv_in.weight`, `down_blocks.N.resnets.M...`) seen with
the LDM key names the networks use, so UNETLoader accepts them like ComfyUI does.

The block structure (res-blocks per level, transformer depth per block, middle block) is
read from the diffusers keys; the key mapping is the one LoRA loading uses
(models/lora/keymap.py), built from that structure.
"""
from __future__ import annotations

from models.lora.keymap import diffusers_to_ldm
from models.state_dict import TensorSource


def is_diffusers_unet(src: TensorSource) -> bool:
    return "conv_in.weight" in src and any(k.startswith("down_blocks.") for k in src.keys())


def _count(keys, prefix: str) -> int:
    n = 0
    while any(k.startswith(f"{prefix}{n}.") for k in keys):
        n += 1
    return n


def diffusers_structure(keys) -> dict:
    """num_res_blocks, transformer_depth (input res-blocks in order), transformer_depth_output
    (output blocks from the last to the first, ComfyUI's order) and transformer_depth_middle."""
    keys = list(keys)
    levels = _count(keys, "down_blocks.")
    num_res, depth_in, depth_out = [], [], []
    for x in range(levels):
        n = _count(keys, f"down_blocks.{x}.resnets.")
        num_res.append(n)
        depth_in += [_count(keys, f"down_blocks.{x}.attentions.{i}.transformer_blocks.") for i in range(n)]
    for x in range(levels):
        n = _count(keys, f"up_blocks.{x}.resnets.")
        depth_out += [_count(keys, f"up_blocks.{x}.attentions.{i}.transformer_blocks.") for i in range(n)]
    if any(k.startswith("mid_block.attentions.0.") for k in keys):
        middle = _count(keys, "mid_block.attentions.0.transformer_blocks.")
    elif any(k.startswith("mid_block.resnets.0.") for k in keys):
        middle = -1
    else:
        middle = -2
    return {"num_res_blocks": num_res, "transformer_depth": depth_in,
            "transformer_depth_output": list(reversed(depth_out)), "transformer_depth_middle": middle}


class LDMView(TensorSource):
    """A diffusers UNet source read under LDM key names (keys it cannot place are left out)."""

    def __init__(self, src: TensorSource):
        self.src = src
        self.metadata = getattr(src, "metadata", None)
        mapping = diffusers_to_ldm(**diffusers_structure(src.keys()))
        self._to_src = {ldm: d for d, ldm in mapping.items() if d in src}

    def keys(self):
        return list(self._to_src)

    def shape(self, key):
        return self.src.shape(self._to_src[key])

    def get(self, key, dtype=None, device=None):
        return self.src.get(self._to_src[key], dtype, device)

    def close(self):
        self.src.close()
