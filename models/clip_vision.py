"""CLIP vision towers (CLIP_VISION): OpenAI ViT-L/14 (and its 336-px variant, optionally with a
LLaVA projector), OpenCLIP ViT-H/14 and ViT-bigG/14, the image preprocessing ComfyUI applies
before them, and the output object nodes pass on (CLIP_VISION_OUTPUT).

Module names are the Hugging Face CLIPVisionModelWithProjection layout
(`vision_model.embeddings.patch_embedding.weight`, `vision_model.encoder.layers.N.self_attn.
q_proj.weight`, `vision_model.pre_layrnorm` [sic], `vision_model.post_layernorm`,
`visual_projection.weight`). OpenCLIP `visual.*` towers (stand-alone files, and the one inside
SD2.1-unCLIP checkpoints at `embedder.model.visual.`) are converted to it on load.

Which tower a file holds is decided like ComfyUI 0.8.0 does, by depth (COVERAGE.md §3.6):
a 48th layer -> ViT-bigG/14, a 31st -> ViT-H/14, a 23rd -> ViT-L/14 (577 positions: the
336-px variant). The widths, depth, patch size and image size are read from the shapes, so a
reduced-width test file with the real key layout and depth runs the same code.

Precision follows ComfyUI: the embeddings and encoder layers are held in fp16 (its text-encoder
dtype) while the pre/post LayerNorms and the projection stay fp32; every layer computes in fp32.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models import memory, ops
from models.clip_text import EncoderLayer, openclip_layer_to_hf
from models.state_dict import ModelFileError, TensorSource, as_source

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HF_PREFIX = "vision_model."
UNCLIP_PREFIX = "embedder.model.visual."  # SD2.1-unCLIP checkpoints (OpenCLIP layout)

# name -> (title, heads, activation) of the real towers; test files keep heads and depth.
TOWERS = {
    "vit_bigg": ("CLIP ViT-bigG/14", 16, "gelu"),
    "vit_h": ("CLIP ViT-H/14", 16, "gelu"),
    "vit_l": ("CLIP ViT-L/14", 16, "quick_gelu"),
    "vit_l_336": ("CLIP ViT-L/14-336", 16, "quick_gelu"),
}


class UnknownVisionModelError(ModelFileError):
    """The file is not a CLIP vision model comfyd can run."""


@dataclass(frozen=True)
class VisionConfig:
    kind: str                 # a TOWERS key
    width: int
    layers: int
    heads: int
    ffn: int
    activation: str
    patch: int
    image_size: int
    projection_dim: int | None
    llava_projector: bool = False

    @property
    def title(self) -> str:
        return TOWERS[self.kind][0]

    @property
    def positions(self) -> int:
        return (self.image_size // self.patch) ** 2 + 1


# -- preprocessing ------------------------------------------------------------------------------

def clip_preprocess(image: torch.Tensor, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD,
                    crop: bool = True) -> torch.Tensor:
    """IMAGE [B,H,W,C] in 0..1 -> normalised pixels [B,3,size,size].

    crop=True: bicubic (antialiased) resize so the short side is `size`, then the centre
    square; crop=False: squash to size x size. Pixels are re-quantised to 8 bits (as the
    original PIL pipeline did) before the CLIP mean/std normalisation."""
    if image.shape[-1] > 3:
        image = image[..., :3]
    pixels = image.movedim(-1, 1)
    h, w = pixels.shape[-2:]
    if (h, w) != (size, size):
        if crop:
            scale = size / min(h, w)
            target = (round(scale * h), round(scale * w))
        else:
            target = (size, size)
        pixels = F.interpolate(pixels, size=target, mode="bicubic", antialias=True)
        top, left = (pixels.shape[-2] - size) // 2, (pixels.shape[-1] - size) // 2
        pixels = pixels[:, :, top:top + size, left:left + size]
    pixels = torch.clip(255.0 * pixels, 0, 255).round() / 255.0
    mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
    return (pixels - mean_t) / std_t


# -- the network ----------------------------------------------------------------------------------

class _Encoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.layers))


class _Embeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.empty(cfg.width))
        self.patch_embedding = ops.Conv2d(3, cfg.width, cfg.patch, stride=cfg.patch, bias=False)
        self.position_embedding = ops.Embedding(cfg.positions, cfg.width)

    def forward(self, pixels):
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)
        cls = ops.cast_like(self.class_embedding, patches).expand(pixels.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + ops.cast_like(self.position_embedding.weight, patches)


class _VisionModel(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.embeddings = _Embeddings(cfg)
        self.pre_layrnorm = ops.LayerNorm(cfg.width)  # the HF key's spelling
        self.encoder = _Encoder(cfg)
        self.post_layernorm = ops.LayerNorm(cfg.width)


class _LlavaProjector(nn.Module):
    def __init__(self, width, out=4096):
        super().__init__()
        self.linear_1 = ops.Linear(width, out)
        self.linear_2 = ops.Linear(out, out)

    def forward(self, hidden):
        return self.linear_2(F.gelu(self.linear_1(hidden[:, 1:])))


class VisionTower(nn.Module):
    """forward(pixels) -> (last hidden state, penultimate hidden state, image embeds, mm projection)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.config = cfg
        self.vision_model = _VisionModel(cfg)
        self.visual_projection = ops.Linear(cfg.width, cfg.projection_dim, bias=False) if cfg.projection_dim else None
        self.multi_modal_projector = _LlavaProjector(cfg.width) if cfg.llava_projector else None

    def forward(self, pixels: torch.Tensor):
        vm = self.vision_model
        x = vm.pre_layrnorm(vm.embeddings(pixels))
        penultimate = None
        last_index = len(vm.encoder.layers) - 1
        for i, layer in enumerate(vm.encoder.layers):
            x = layer(x)
            if i == last_index - 1:
                penultimate = x.clone()
        pooled = vm.post_layernorm(x[:, 0, :])
        embeds = self.visual_projection(pooled) if self.visual_projection is not None else pooled
        projected = self.multi_modal_projector(penultimate) if self.multi_modal_projector is not None else None
        return x, penultimate, embeds, projected


# -- the CLIP_VISION_OUTPUT / CLIP_VISION objects -------------------------------------------------

class Output:
    """CLIP_VISION_OUTPUT: fields as attributes and as items (ComfyUI's nodes use both)."""

    def __getitem__(self, key):
        return getattr(self, key)

    def __setitem__(self, key, value):
        setattr(self, key, value)

    def __contains__(self, key):
        return hasattr(self, key)


class ClipVisionModel:
    """CLIP_VISION: a tower plus its preprocessing settings."""

    def __init__(self, tower: VisionTower, load_device=None, output_device="cpu"):
        self.model = tower
        self.config = tower.config
        self.image_size = tower.config.image_size
        self.image_mean, self.image_std = list(CLIP_MEAN), list(CLIP_STD)
        self.load_device = torch.device("cpu") if load_device is None else torch.device(load_device)
        self.offload_device = torch.device("cpu")
        self.output_device = torch.device(output_device)
        self.return_all_hidden_states = False

    @property
    def title(self) -> str:
        return self.config.title

    def encode_image(self, image: torch.Tensor, crop: bool = True) -> Output:
        memory.load_models([self])  # onto load_device (the manager may move it off later)
        pixels = clip_preprocess(image.to(self.load_device), self.image_size, self.image_mean, self.image_std,
                                 crop=crop).float()
        with torch.no_grad():
            last, penultimate, embeds, projected = self.model(pixels)
        out = Output()
        out["last_hidden_state"] = last.to(self.output_device)
        out["image_embeds"] = embeds.to(self.output_device)
        out["penultimate_hidden_states"] = penultimate.to(self.output_device)
        out["mm_projected"] = projected
        return out

    def get_sd(self) -> dict:
        return self.model.state_dict()


# -- layouts and detection -----------------------------------------------------------------------

_OPENCLIP_TOP = {"class_embedding": "vision_model.embeddings.class_embedding",
                 "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
                 "positional_embedding": "vision_model.embeddings.position_embedding.weight",
                 "ln_pre.weight": "vision_model.pre_layrnorm.weight", "ln_pre.bias": "vision_model.pre_layrnorm.bias",
                 "ln_post.weight": "vision_model.post_layernorm.weight",
                 "ln_post.bias": "vision_model.post_layernorm.bias"}
def openclip_visual_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An OpenCLIP visual tower (prefix stripped: `conv1.weight`, `transformer.resblocks.N...`,
    `proj` stored [width, dim] for x @ proj) in the HF layout; other keys are dropped."""
    out = {}
    for k, v in sd.items():
        if k in _OPENCLIP_TOP:
            out[_OPENCLIP_TOP[k]] = v
        elif k == "proj":
            out["visual_projection.weight"] = v.transpose(0, 1).contiguous()
        elif k.startswith("transformer.resblocks."):
            n, rest = k[len("transformer.resblocks."):].split(".", 1)
            out.update(openclip_layer_to_hf(rest, v, f"vision_model.encoder.layers.{n}."))
    return out


def _describe(keys) -> str:
    from models.detect import describe_keys
    return describe_keys(as_source({k: torch.empty(0) for k in keys}))


def _layer_count(keys, pattern) -> int:
    found = [int(m.group(1)) for k in keys if (m := re.match(pattern, k))]
    return 1 + max(found) if found else 0


def detect_vision_config(shapes: dict[str, tuple]) -> VisionConfig:
    """The tower of an HF-layout vision state dict, given key -> shape."""
    keys = shapes.keys()
    if any(re.match(r"(.*\.)?encoder\.layer\.\d+\.layer_scale2\.lambda1", k) for k in keys):
        raise UnknownVisionModelError("this is a DINOv2 image encoder, which comfyd does not support yet")
    layers = _layer_count(keys, r"vision_model\.encoder\.layers\.(\d+)\.")
    if layers == 0:
        raise UnknownVisionModelError(f"not a CLIP vision model: no vision_model.encoder.layers.* or "
                                      f"visual.transformer.resblocks.* ({_describe(keys)})")
    if "vision_model.embeddings.class_embedding" not in shapes:
        raise UnknownVisionModelError("this looks like a SigLIP vision model (no class embedding), "
                                      "which comfyd does not support yet")
    if layers >= 48:
        kind = "vit_bigg"
    elif layers >= 31:
        kind = "vit_h"
    elif layers >= 23:
        pos = shapes.get("vision_model.embeddings.position_embedding.weight", (0,))[0]
        kind = "vit_l_336" if pos == 577 else "vit_l"
    else:
        raise UnknownVisionModelError(f"a CLIP vision tower with {layers} layers: ComfyUI knows towers of "
                                      f"24 (ViT-L/14), 32 (ViT-H/14) and 48 (ViT-bigG/14) layers")
    try:
        width = shapes["vision_model.embeddings.class_embedding"][0]
        patch = shapes["vision_model.embeddings.patch_embedding.weight"][-1]
        positions = shapes["vision_model.embeddings.position_embedding.weight"][0]
        ffn = shapes["vision_model.encoder.layers.0.mlp.fc1.weight"][0]
    except KeyError as e:
        raise UnknownVisionModelError(f"CLIP vision model without {e.args[0]}") from None
    side = math.isqrt(positions - 1)
    if side * side != positions - 1:
        raise UnknownVisionModelError(f"{positions} position embeddings do not form a square patch grid")
    _, heads, activation = TOWERS[kind]
    if width % heads:
        raise UnknownVisionModelError(f"width {width} is not divisible by the {heads} attention heads")
    proj = shapes.get("visual_projection.weight")
    return VisionConfig(kind, width, layers, heads, ffn, activation, patch, side * patch,
                        proj[0] if proj is not None else None,
                        llava_projector="multi_modal_projector.linear_1.weight" in shapes)


# Parts ComfyUI builds without a dtype (so they stay fp32 whatever the text-encoder dtype is).
_FP32_PARTS = ("vision_model.pre_layrnorm.", "vision_model.post_layernorm.", "visual_projection.")


def build_vision_model(sd: dict[str, torch.Tensor], device=None, dtype: torch.dtype | None = torch.float16,
                       what: str = "CLIP vision") -> ClipVisionModel:
    """A CLIP_VISION from an HF-layout state dict (extra keys, e.g. a text tower, are ignored)."""
    cfg = detect_vision_config({k: tuple(v.shape) for k, v in sd.items()})
    with torch.device("meta"):
        tower = VisionTower(cfg)
    own = tower.state_dict().keys()
    tensors = {}
    for k in own:
        if k not in sd:
            continue
        v = sd[k]
        if v.is_floating_point():
            if k.startswith(_FP32_PARTS):
                v = v.to(torch.float32)
            elif dtype is not None:
                v = v.to(dtype)
        tensors[k] = v.to(device) if device is not None else v
    tower = ops.load_into(tower, tensors, strict=False, what=f"{what} ({cfg.title})").eval()
    return ClipVisionModel(tower, load_device=device)


def vision_state_dict(source, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """The HF-layout vision state dict of a file or state dict: HF `vision_model.*` (optionally
    under a prefix), or an OpenCLIP `visual.*` tower (under `prefix`, default: found)."""
    src = as_source(source)
    try:
        keys = src.keys()
        if prefix is None:
            hf = next((k for k in keys if k.endswith("vision_model.embeddings.class_embedding")), None)
            oc = next((k for k in keys if k.endswith("transformer.resblocks.0.attn.in_proj_weight")
                       and "visual." in k), None)
            if hf is not None:
                prefix = hf[:-len("vision_model.embeddings.class_embedding")]
            elif oc is not None:
                prefix = oc[:-len("transformer.resblocks.0.attn.in_proj_weight")]
            else:
                prefix = ""
        sub = [k for k in keys if k.startswith(prefix)]
        if f"{prefix}transformer.resblocks.0.attn.in_proj_weight" in src:
            return openclip_visual_to_hf(src.read(sub, strip=prefix))
        return src.read(sub, strip=prefix)
    finally:
        if src is not source:
            src.close()


def load_clip_vision(source, device=None, dtype: torch.dtype | None = torch.float16,
                     prefix: str | None = None) -> ClipVisionModel:
    """CLIPVisionLoader: a stand-alone CLIP vision file (path, state dict or TensorSource).
    Raises UnknownVisionModelError naming what the file holds when it is not one."""
    src = as_source(source)
    try:
        sd = vision_state_dict(src, prefix)
        if not sd:
            raise UnknownVisionModelError(f"not a CLIP vision model ({_describe(src.keys())})")
        try:
            return build_vision_model(sd, device, dtype)
        except ValueError as e:
            if isinstance(e, UnknownVisionModelError):
                raise
            raise UnknownVisionModelError(str(e)) from e
    finally:
        if src is not source:
            src.close()


def has_vision_tower(src: TensorSource, prefix: str = UNCLIP_PREFIX) -> bool:
    return f"{prefix}transformer.resblocks.0.attn.in_proj_weight" in src or \
        f"{prefix}vision_model.embeddings.class_embedding" in src
