"""Which model a state dict holds, from its key names and tensor shapes (never the file name).

`detect_unet_config` reads the UNet's shape (COVERAGE.md §3.1 step 3): input/model
channels from `input_blocks.0.0.weight`, the levels from where `op` downsamplers sit, the
res-blocks per level, the transformer depth of every block (count of
`transformer_blocks.N`), the middle block, `context_dim` from the first cross-attention,
linear or 1x1-conv projections, and the ADM width from `label_emb.0.0.weight`.

`detect_checkpoint` then names the family. The families differ in structure (projection
kind, ADM, transformer depths per block), so the rules are written on structure, which
holds at any width: the same rule detects `sd_xl_base_1.0.safetensors` and a tiny test file
with its key layout. For files at the real widths, the widths must also be the family's
(context 768 for SD1 and so on), which is the rule ComfyUI applies.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from models.state_dict import TensorSource, as_source

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."


class UnknownArchitectureError(ValueError):
    """The state dict is not one of the supported model families."""


@dataclass
class UNetConfig:
    in_channels: int
    out_channels: int
    model_channels: int
    num_res_blocks: list
    channel_mult: list
    transformer_depth: list         # per input res-block
    transformer_depth_output: list  # per output block
    transformer_depth_middle: int   # -1: res-block only, -2: no middle block
    context_dim: int | None
    use_linear_in_transformer: bool
    adm_in_channels: int | None
    temporal: bool = False
    num_heads: int = -1            # SD1: 8 heads at every width
    num_head_channels: int = -1    # SD2/SDXL: 64 channels per head
    attn_precision: torch.dtype | None = None

    def heads_for(self, channels: int) -> tuple[int, int]:
        """(heads, channels per head) of a transformer at this width. Reduced-width test
        models narrower than one 64-channel head get one head."""
        if self.num_head_channels > 0:
            heads = max(1, channels // self.num_head_channels)
        else:
            heads = self.num_heads
        return heads, channels // heads

    def summary(self) -> str:
        proj = "linear" if self.use_linear_in_transformer else "1x1-conv"
        adm = f"ADM {self.adm_in_channels}" if self.adm_in_channels else "no ADM"
        return (f"in_channels {self.in_channels}, model_channels {self.model_channels}, "
                f"channel_mult {self.channel_mult}, num_res_blocks {self.num_res_blocks}, "
                f"transformer_depth {self.transformer_depth}, middle {self.transformer_depth_middle}, "
                f"context_dim {self.context_dim}, {proj} projections, {adm}")


def _count(keys: set, pattern: str) -> int:
    """How many consecutive indices N make `pattern.format(N)` a prefix of some key."""
    n = 0
    while any(k.startswith(pattern.format(n)) for k in keys):
        n += 1
    return n


def _transformer(src, keys, prefix):
    """(depth, context_dim, linear, temporal) of the transformer at `prefix`1., or None."""
    tp = prefix + "1.transformer_blocks."
    depth = _count(keys, tp + "{}.")
    if depth == 0:
        return None
    context_dim = src.shape(tp + "0.attn2.to_k.weight")[1]
    linear = len(src.shape(prefix + "1.proj_in.weight")) == 2
    temporal = any(k.startswith(prefix + "1.time_stack.") or k.startswith(prefix + "1.time_mix_blocks.") for k in keys)
    return depth, context_dim, linear, temporal


def detect_unet_config(source, prefix: str = UNET_PREFIX) -> UNetConfig | None:
    """The UNet's configuration read from shapes, or None when there is no LDM UNet there."""
    src = as_source(source)
    keys = {k for k in src.keys() if k.startswith(prefix)}
    first = prefix + "input_blocks.0.0.weight"
    if first not in keys:
        return None
    model_channels, in_channels = src.shape(first)[:2]
    out_key = prefix + "out.2.weight"
    out_channels = src.shape(out_key)[0] if out_key in keys else 4
    adm_key = prefix + "label_emb.0.0.weight"
    adm = src.shape(adm_key)[1] if adm_key in keys else None

    n_in = _count(keys, prefix + "input_blocks.{}.")
    num_res_blocks, channel_mult, depth_in, depth_out = [], [], [], []
    res_blocks, mult = 0, 0
    context_dim, linear, temporal = None, False, False

    def output_depth(index):
        t = _transformer(src, keys, f"{prefix}output_blocks.{index}.")
        return t[0] if t else 0

    # Output depths are listed from the last output block to the first (the UNet pops them),
    # output block n_in-1-i pairing with input block i.
    for i in range(n_in):
        p = f"{prefix}input_blocks.{i}."
        out_index = n_in - i - 1
        if p + "0.op.weight" in keys:  # a downsampler closes the level
            num_res_blocks.append(res_blocks)
            channel_mult.append(mult)
            res_blocks, mult = 0, 0
            depth_out.append(output_depth(out_index))
            continue
        if p + "0.in_layers.0.weight" in keys:
            res_blocks += 1
            mult = src.shape(p + "0.out_layers.3.weight")[0] // model_channels
            t = _transformer(src, keys, p)
            depth_in.append(t[0] if t else 0)
            if t and context_dim is None:
                _, context_dim, linear, temporal = t
        if f"{prefix}output_blocks.{out_index}.0.in_layers.0.weight" in keys:
            depth_out.append(output_depth(out_index))
    num_res_blocks.append(res_blocks)
    channel_mult.append(mult)

    if prefix + "middle_block.1.proj_in.weight" in keys:
        middle = _count(keys, prefix + "middle_block.1.transformer_blocks.{}.")
    elif prefix + "middle_block.0.in_layers.0.weight" in keys:
        middle = -1
    else:
        middle = -2
    return UNetConfig(in_channels, out_channels, model_channels, num_res_blocks, channel_mult, depth_in, depth_out,
                      middle, context_dim, linear, adm, temporal)


@dataclass(frozen=True)
class FamilySpec:
    name: str
    comfy_config: str        # ComfyUI's supported_models class of the same rule
    title: str
    linear: bool
    adm: bool
    transformer_depth: tuple
    widths: dict             # the real files' model_channels / context_dim / adm_in_channels
    head_rule: tuple         # ("num_heads", 8) or ("num_head_channels", 64)
    latent_format: str
    attn_precision: torch.dtype | None = None


FAMILIES = [  # in ComfyUI's matching order
    FamilySpec("sd1", "SD15", "SD1.x", False, False, (1, 1, 1, 1, 1, 1, 0, 0),
               {"model_channels": 320, "context_dim": 768, "adm_in_channels": None}, ("num_heads", 8), "SD15"),
    FamilySpec("sd2", "SD20", "SD2.x", True, False, (1, 1, 1, 1, 1, 1, 0, 0),
               {"model_channels": 320, "context_dim": 1024, "adm_in_channels": None}, ("num_head_channels", 64),
               "SD15", torch.float32),
    FamilySpec("sd21_unclip", "SD21UnclipH", "SD2.1 unCLIP", True, True, (1, 1, 1, 1, 1, 1, 0, 0),
               {"model_channels": 320, "context_dim": 1024}, ("num_head_channels", 64), "SD15", torch.float32),
    FamilySpec("sdxl_refiner", "SDXLRefiner", "SDXL refiner", True, True, (0, 0, 4, 4, 4, 4, 0, 0),
               {"model_channels": 384, "context_dim": 1280, "adm_in_channels": 2560}, ("num_head_channels", 64), "SDXL"),
    FamilySpec("sdxl", "SDXL", "SDXL", True, True, (0, 0, 2, 2, 10, 10),
               {"model_channels": 320, "context_dim": 2048, "adm_in_channels": 2816}, ("num_head_channels", 64), "SDXL"),
    FamilySpec("ssd1b", "SSD1B", "SSD-1B", True, True, (0, 0, 2, 2, 4, 4),
               {"model_channels": 320, "context_dim": 2048, "adm_in_channels": 2816}, ("num_head_channels", 64), "SDXL"),
    FamilySpec("koala_700m", "KOALA_700M", "KOALA-700M", True, True, (0, 2, 5),
               {"model_channels": 320, "context_dim": 2048, "adm_in_channels": 2816}, ("num_head_channels", 64), "SDXL"),
    FamilySpec("koala_1b", "KOALA_1B", "KOALA-1B", True, True, (0, 2, 6),
               {"model_channels": 320, "context_dim": 2048, "adm_in_channels": 2816}, ("num_head_channels", 64), "SDXL"),
    FamilySpec("segmind_vega", "Segmind_Vega", "Segmind Vega", True, True, (0, 0, 1, 1, 2, 2),
               {"model_channels": 320, "context_dim": 2048, "adm_in_channels": 2816}, ("num_head_channels", 64), "SDXL"),
]
SDXL_LIKE = {"sdxl", "ssd1b", "koala_700m", "koala_1b", "segmind_vega"}
VARIANTS = {4: "", 9: "inpaint", 8: "instructpix2pix"}


@dataclass
class Detection:
    family: str                 # FamilySpec.name
    comfy_config: str
    title: str
    variant: str                # "", "inpaint" (9 input channels), "instructpix2pix" (8)
    model_type: str             # models.sampling.model_sampling prediction: "eps" / "v_prediction"
    unet: UNetConfig
    unet_prefix: str
    latent_format: str          # models.latent_formats class name
    text_encoders: dict = field(default_factory=dict)  # name -> (key prefix, "hf" | "openclip")
    vae_prefix: str | None = None
    zsnr: bool = False
    full_width: bool = True     # widths are those of the real files

    @property
    def description(self) -> str:
        extra = f" {self.variant}" if self.variant else ""
        return f"{self.title}{extra} ({self.model_type})"


def _matches(spec: FamilySpec, cfg: UNetConfig) -> bool:
    return (cfg.use_linear_in_transformer == spec.linear and bool(cfg.adm_in_channels) == spec.adm
            and tuple(cfg.transformer_depth) == spec.transformer_depth and not cfg.temporal)


def _width_mismatch(spec: FamilySpec, cfg: UNetConfig) -> str | None:
    if cfg.model_channels != spec.widths["model_channels"]:
        return None  # a reduced-width model: structure alone decides
    for name, want in spec.widths.items():
        got = getattr(cfg, name)
        if got != want:
            return f"{name} {got} where {spec.title} has {want}"
    return None


def unet_prefix(src: TensorSource) -> str | None:
    if any(k.startswith(UNET_PREFIX + "input_blocks.") for k in src.keys()):
        return UNET_PREFIX
    if "input_blocks.0.0.weight" in src:
        return ""
    return None


def _prediction_type(spec, cfg, src, prefix) -> tuple[str, bool]:
    keys = src
    if spec.name in SDXL_LIKE or spec.name == "sdxl_refiner":
        if "edm_mean" in keys or "edm_vpred.sigma_max" in keys:
            raise UnknownArchitectureError("EDM-parameterised SDXL checkpoints (Playground 2.5, edm_vpred) "
                                           "are not supported yet")
        if "v_pred" in keys:
            return "v_prediction", "ztsnr" in keys
        return "eps", False
    if spec.name in ("sd2", "sd21_unclip") and cfg.in_channels == 4:
        # ComfyUI's test: v-prediction models have spread-out norm biases in the last block.
        k = f"{prefix}output_blocks.11.1.transformer_blocks.0.norm1.bias"
        if k in keys and torch.std(src.get(k, torch.float32), unbiased=False) > 0.09:
            return "v_prediction", False
    return "eps", False


def _text_encoders(spec: FamilySpec, src: TensorSource) -> dict:
    def has(prefix):
        return any(k.startswith(prefix) for k in src.keys())
    out = {}
    if spec.name == "sd1":
        if has("cond_stage_model.transformer."):
            out["clip_l"] = ("cond_stage_model.transformer.", "hf")
    elif spec.name in ("sd2", "sd21_unclip"):
        for p in ("cond_stage_model.model.", "conditioner.embedders.0.model."):
            if has(p):
                out["clip_h"] = (p, "openclip")
                break
    elif spec.name == "sdxl_refiner":
        if has("conditioner.embedders.0.model."):
            out["clip_g"] = ("conditioner.embedders.0.model.", "openclip")
    else:
        if has("conditioner.embedders.0.transformer."):
            out["clip_l"] = ("conditioner.embedders.0.transformer.", "hf")
        if has("conditioner.embedders.1.model."):
            out["clip_g"] = ("conditioner.embedders.1.model.", "openclip")
    return out


def describe_keys(src: TensorSource) -> str:
    """What a state dict that is not a known model looks like, for error messages."""
    keys = src.keys()
    if not keys:
        return "the file holds no tensors"
    hints = [
        (lambda k: k == "lora_controlnet", "a Control-LoRA"),
        (lambda k: "lora_" in k or ".lora_up." in k or ".lora_A." in k or k.endswith(".hada_w1_a"), "a LoRA"),
        (lambda k: "zero_convs." in k or "controlnet_cond_embedding" in k, "a ControlNet"),
        (lambda k: k.startswith(("encoder.down.", "decoder.up.")), "a VAE"),
        (lambda k: "vision_model." in k or k.startswith("visual."), "a CLIP vision model"),
        (lambda k: "joint_blocks." in k, "an SD3 (MMDiT) model"),
        (lambda k: "double_blocks." in k, "a Flux-style DiT"),
        (lambda k: k.startswith(("down_blocks.", "conv_in.")) or ".down_blocks." in k, "a diffusers-format UNet"),
        (lambda k: "text_model.encoder.layers." in k or "transformer.resblocks." in k, "a text encoder"),
    ]
    for test, what in hints:
        if any(test(k) for k in keys):
            looks = f"; it looks like {what}"
            break
    else:
        looks = ""
    prefixes: dict[str, int] = {}
    for k in keys:
        p = ".".join(k.split(".")[:2]) if k.count(".") > 1 else k.split(".")[0]
        prefixes[p] = prefixes.get(p, 0) + 1
    top = sorted(prefixes.items(), key=lambda kv: -kv[1])[:5]
    listed = ", ".join(f"{p}.* ({n})" for p, n in top)
    return f"{len(keys)} tensors under {listed}{looks}"


def detect_checkpoint(source, prefix: str | None = None) -> Detection:
    """Name the model family of a checkpoint (or bare UNet) state dict; raises
    UnknownArchitectureError, naming what was found, for anything else."""
    src = as_source(source)
    if prefix is None:
        prefix = unet_prefix(src)
    cfg = detect_unet_config(src, prefix) if prefix is not None else None
    if cfg is None:
        raise UnknownArchitectureError(f"no Stable Diffusion UNet found ({describe_keys(src)})")
    for spec in FAMILIES:
        if not _matches(spec, cfg):
            continue
        mismatch = _width_mismatch(spec, cfg)
        if mismatch:
            raise UnknownArchitectureError(f"UNet laid out like {spec.title} but with {mismatch} ({cfg.summary()})")
        if cfg.in_channels not in VARIANTS:
            break
        rule, value = spec.head_rule
        setattr(cfg, rule, value)
        cfg.attn_precision = spec.attn_precision
        model_type, zsnr = _prediction_type(spec, cfg, src, prefix)
        return Detection(
            family=spec.name, comfy_config=spec.comfy_config, title=spec.title, variant=VARIANTS[cfg.in_channels],
            model_type=model_type, unet=cfg, unet_prefix=prefix, latent_format=spec.latent_format,
            text_encoders=_text_encoders(spec, src) if prefix else {},
            vae_prefix=VAE_PREFIX if prefix and any(k.startswith(VAE_PREFIX) for k in src.keys()) else None,
            zsnr=zsnr, full_width=cfg.model_channels == spec.widths["model_channels"])
    raise UnknownArchitectureError(
        f"unknown UNet architecture ({cfg.summary()}); supported: " + ", ".join(s.title for s in FAMILIES))

