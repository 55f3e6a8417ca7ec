"""Which model weight each LoRA key names.

Targets are (component, key) pairs: component "unet" with keys of the UNet's own state dict
(LDM names: "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"), and "clip_l" /
"clip_g" / "clip_h" with Hugging Face CLIP text-model keys ("text_model.encoder.layers.0.
self_attn.q_proj.weight"). LoRA files name the same weights in several dialects: kohya
("lora_unet_<ldm or diffusers path with _>", "lora_te[12]_..."), diffusers/PEFT
("unet.<diffusers path>", "text_encoder[_2].<path>"), generic ("diffusion_model.<ldm path>",
"text_encoders.<path>") and SimpleTuner LyCORIS ("lycoris_<diffusers path with _>").
"""
from __future__ import annotations

# diffusers names of the parts of one spatial transformer / resnet, and their LDM names
_ATTENTION_PARTS = ["proj_in.weight", "proj_in.bias", "proj_out.weight", "proj_out.bias", "norm.weight", "norm.bias"]
_TRANSFORMER_PARTS = [
    "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "norm3.weight", "norm3.bias",
    "attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight", "attn1.to_out.0.weight", "attn1.to_out.0.bias",
    "attn2.to_q.weight", "attn2.to_k.weight", "attn2.to_v.weight", "attn2.to_out.0.weight", "attn2.to_out.0.bias",
    "ff.net.0.proj.weight", "ff.net.0.proj.bias", "ff.net.2.weight", "ff.net.2.bias",
]
_RESNET_PARTS = {  # LDM -> diffusers
    "in_layers.2.weight": "conv1.weight", "in_layers.2.bias": "conv1.bias",
    "emb_layers.1.weight": "time_emb_proj.weight", "emb_layers.1.bias": "time_emb_proj.bias",
    "out_layers.3.weight": "conv2.weight", "out_layers.3.bias": "conv2.bias",
    "skip_connection.weight": "conv_shortcut.weight", "skip_connection.bias": "conv_shortcut.bias",
    "in_layers.0.weight": "norm1.weight", "in_layers.0.bias": "norm1.bias",
    "out_layers.0.weight": "norm2.weight", "out_layers.0.bias": "norm2.bias",
}
_BASIC = {  # diffusers -> LDM
    "class_embedding.linear_1.weight": "label_emb.0.0.weight", "class_embedding.linear_1.bias": "label_emb.0.0.bias",
    "class_embedding.linear_2.weight": "label_emb.0.2.weight", "class_embedding.linear_2.bias": "label_emb.0.2.bias",
    "add_embedding.linear_1.weight": "label_emb.0.0.weight", "add_embedding.linear_1.bias": "label_emb.0.0.bias",
    "add_embedding.linear_2.weight": "label_emb.0.2.weight", "add_embedding.linear_2.bias": "label_emb.0.2.bias",
    "conv_in.weight": "input_blocks.0.0.weight", "conv_in.bias": "input_blocks.0.0.bias",
    "conv_norm_out.weight": "out.0.weight", "conv_norm_out.bias": "out.0.bias",
    "conv_out.weight": "out.2.weight", "conv_out.bias": "out.2.bias",
    "time_embedding.linear_1.weight": "time_embed.0.weight", "time_embedding.linear_1.bias": "time_embed.0.bias",
    "time_embedding.linear_2.weight": "time_embed.2.weight", "time_embedding.linear_2.bias": "time_embed.2.bias",
}

CLIP_PARTS = {"mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
              "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
              "self_attn.out_proj": "self_attn_out_proj"}


def _transformer(mapping, d_prefix, l_prefix, depth):
    for b in _ATTENTION_PARTS:
        mapping[f"{d_prefix}.{b}"] = f"{l_prefix}.{b}"
    for t in range(depth):
        for b in _TRANSFORMER_PARTS:
            mapping[f"{d_prefix}.transformer_blocks.{t}.{b}"] = f"{l_prefix}.transformer_blocks.{t}.{b}"


def _resnet(mapping, d_prefix, l_prefix):
    for ldm, diff in _RESNET_PARTS.items():
        mapping[f"{d_prefix}.{diff}"] = f"{l_prefix}.{ldm}"


def diffusers_to_ldm(num_res_blocks: list[int], transformer_depth: list[int], transformer_depth_output: list[int],
                     transformer_depth_middle: int) -> dict[str, str]:
    """diffusers UNet key -> LDM key, from the UNet's block structure (ComfyUI's unet_config
    fields). transformer_depth has one entry per input res block in order;
    transformer_depth_output one per output res block, listed from the LAST output block to
    the first (the order ComfyUI's detection produces)."""
    m: dict[str, str] = {}
    depth_in, depth_out = list(transformer_depth), list(transformer_depth_output)
    levels = len(num_res_blocks)
    for x in range(levels):
        n = 1 + (num_res_blocks[x] + 1) * x
        for i in range(num_res_blocks[x]):
            _resnet(m, f"down_blocks.{x}.resnets.{i}", f"input_blocks.{n}.0")
            depth = depth_in.pop(0)
            if depth > 0:
                _transformer(m, f"down_blocks.{x}.attentions.{i}", f"input_blocks.{n}.1", depth)
            n += 1
        for k in ("weight", "bias"):
            m[f"down_blocks.{x}.downsamplers.0.conv.{k}"] = f"input_blocks.{n}.0.op.{k}"
    _transformer(m, "mid_block.attentions.0", "middle_block.1", transformer_depth_middle)
    for i, n in enumerate([0, 2]):
        _resnet(m, f"mid_block.resnets.{i}", f"middle_block.{n}")
    reversed_blocks = list(reversed(num_res_blocks))
    for x in range(levels):
        n = (reversed_blocks[x] + 1) * x
        count = reversed_blocks[x] + 1
        for i in range(count):
            _resnet(m, f"up_blocks.{x}.resnets.{i}", f"output_blocks.{n}.0")
            c = 1
            depth = depth_out.pop()
            if depth > 0:
                c += 1
                _transformer(m, f"up_blocks.{x}.attentions.{i}", f"output_blocks.{n}.1", depth)
            if i == count - 1:
                for k in ("weight", "bias"):
                    m[f"up_blocks.{x}.upsamplers.0.conv.{k}"] = f"output_blocks.{n}.{c}.conv.{k}"
            n += 1
    m.update(_BASIC)
    return m


def unet_key_map(unet_keys, structure: dict | None = None) -> dict[str, tuple]:
    """LoRA name (without suffix) -> ("unet", weight key)."""
    out: dict[str, tuple] = {}
    keys = set(unet_keys)
    for k in keys:
        if k.endswith(".weight"):
            stem = k[:-len(".weight")]
            out["lora_unet_" + stem.replace(".", "_")] = ("unet", k)
            out["diffusion_model." + stem] = ("unet", k)
        else:
            out["diffusion_model." + k] = ("unet", k)
    if structure:
        for d_key, l_key in diffusers_to_ldm(**structure).items():
            if not d_key.endswith(".weight") or l_key not in keys:
                continue
            stem = d_key[:-len(".weight")]
            target = ("unet", l_key)
            out["lora_unet_" + stem.replace(".", "_")] = target
            out["lycoris_" + stem.replace(".", "_")] = target
            for prefix in ("", "unet."):
                name = prefix + stem.replace(".to_", ".processor.to_")
                if name.endswith(".to_out.0"):
                    name = name[:-2]
                out[name] = target
    return out


def clip_key_map(encoders: dict[str, list[str]]) -> dict[str, tuple]:
    """encoders: {"clip_l" | "clip_g" | "clip_h": that encoder's weight keys (HF layout)}."""
    out: dict[str, tuple] = {}
    for name, keys in encoders.items():
        for k in keys:
            if k.endswith(".weight"):
                out[f"text_encoders.{name}.transformer.{k[:-len('.weight')]}"] = (name, k)
    has_l, has_g = "clip_l" in encoders, "clip_g" in encoders
    for name, keys in encoders.items():
        keyset = set(keys)
        for b in range(48):
            for part, kohya in CLIP_PARTS.items():
                k = f"text_model.encoder.layers.{b}.{part}.weight"
                if k not in keyset:
                    continue
                target = (name, k)
                if name in ("clip_l", "clip_h") or (name == "clip_g" and not has_l):
                    out[f"lora_te_text_model_encoder_layers_{b}_{kohya}"] = target
                    out[f"text_encoder.text_model.encoder.layers.{b}.{part}"] = target
                if name in ("clip_l", "clip_h"):
                    out[f"lora_te1_text_model_encoder_layers_{b}_{kohya}"] = target
                if name == "clip_g" and has_l:
                    out[f"lora_te2_text_model_encoder_layers_{b}_{kohya}"] = target
                    out[f"text_encoder_2.text_model.encoder.layers.{b}.{part}"] = target
    if has_g and "text_projection.weight" in set(encoders["clip_g"]):
        out["lora_te2_text_projection"] = ("clip_g", "text_projection.weight")
    if has_l and "text_projection.weight" in set(encoders["clip_l"]):
        out["lora_te1_text_projection"] = ("clip_l", "text_projection.weight")
    return out
