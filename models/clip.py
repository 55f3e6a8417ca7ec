"""CLIP: the text-encoder object the CLIP* nodes pass around (ComfyUI's comfy.sd.CLIP).

    clip = clip_from_checkpoint("sd_xl_base_1.0.safetensors", embedding_lookup=EmbeddingLibrary(dirs))
    tokens = clip.tokenize("a photo of a cat")               # {"g": chunks, "l": chunks}
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    skip2 = clip.clone(); skip2.clip_layer(-2)              # CLIPSetLastLayer

Families and what they output (COVERAGE.md §3.5, §4.6):
  sd1           {"l"}       cond = CLIP-L (768), pooled = unprojected CLIP-L pooled
  sd2           {"h"}       cond = OpenCLIP-H (1024), pooled = projected
  sdxl          {"g", "l"}  cond = concat(CLIP-L, CLIP-G) per token (2048), pooled = projected CLIP-G
  sdxl_refiner  {"g", "l"}  cond = CLIP-G (1280), pooled = projected CLIP-G
Clones share the networks; each clone keeps its own clip-skip setting and LoRA patches
(applied to the shared weights right before encoding, see models/lora/patcher.py).
"""
from __future__ import annotations

import torch

from models.clip_text import LayerChoice, TextEncoder, build_text_model
from models.lora.patcher import WeightPatcher
from models.tokenizer import END_TOKEN, EmbeddingLookup, PromptTokenizer

# family -> token-dict key -> (encoder name, default layer choice, pad token)
FAMILY_ENCODERS = {
    "sd1": {"l": ("clip_l", LayerChoice(None, True, False), END_TOKEN)},
    "sd2": {"h": ("clip_h", LayerChoice(-2, True, True), 0)},
    "sdxl": {"g": ("clip_g", LayerChoice(-2, False, True), 0),
             "l": ("clip_l", LayerChoice(-2, False, True), END_TOKEN)},
    "sdxl_refiner": {"g": ("clip_g", LayerChoice(-2, False, True), 0)},
}


def family_of(encoder_names) -> str:
    """The text-encoder family of a set of encoders ("clip_l", "clip_h", "clip_g")."""
    names = set(encoder_names)
    for family, wanted in (("sdxl", {"clip_l", "clip_g"}), ("sd1", {"clip_l"}), ("sd2", {"clip_h"}),
                           ("sdxl_refiner", {"clip_g"})):
        if names == wanted:
            return family
    raise ValueError(f"no CLIP model combines the text encoders {sorted(names)}")


def _encoder_target(key: str):
    """ComfyUI's CLIP patch keys: "clip_l.transformer.text_model..." (also without "transformer.")."""
    name, _, rest = key.partition(".")
    if not rest:
        return None
    return (name, rest[len("transformer."):] if rest.startswith("transformer.") else rest)


class CLIP:
    def __init__(self, family: str, models: dict, embedding_lookup: EmbeddingLookup | None = None,
                 output_device="cpu"):
        """models: encoder name ("clip_l", "clip_h", "clip_g") -> ClipTextModel."""
        spec = FAMILY_ENCODERS[family]
        missing = [name for name, _, _ in spec.values() if name not in models]
        if missing:
            raise ValueError(f"{family} text encoding needs {', '.join(missing)}")
        self.family = family
        self.encoders = {key: TextEncoder(name, models[name], choice, pad) for key, (name, choice, pad) in spec.items()}
        self.tokenizer = PromptTokenizer(family, embedding_lookup)
        self.output_device = output_device
        self.layer_idx: int | None = None
        self.tokenizer_options: dict = {}
        self.weight_patches: list = []  # [(patches dict, strength_patch, strength_model)]
        self.weights = WeightPatcher({e.name: e.model for e in self.encoders.values()})

    # -- the comfy.sd.CLIP interface ---------------------------------------------------------
    @property
    def models(self) -> dict:
        """Encoder name -> network (the components LoRA patches address)."""
        return {e.name: e.model for e in self.encoders.values()}

    def clone(self) -> "CLIP":
        c = object.__new__(CLIP)
        c.__dict__.update(self.__dict__)
        c.tokenizer_options = dict(self.tokenizer_options)
        c.weight_patches = list(self.weight_patches)
        return c

    def clip_layer(self, layer_idx: int | None) -> None:
        self.layer_idx = layer_idx

    def set_tokenizer_option(self, name: str, value) -> None:
        self.tokenizer_options[name] = value

    def tokenize(self, text: str, return_word_ids: bool = False, **kwargs) -> dict:
        return self.tokenizer.tokenize_with_weights(text, return_word_ids, **kwargs)

    def add_patches(self, patches: dict, strength_patch: float = 1.0, strength_model: float = 1.0) -> list:
        """patches: {(encoder name, HF key) | "clip_l.transformer.<HF key>": Adapter or a ComfyUI
        patch value}; returns the keys (as given) this CLIP has."""
        from models.merge import normalise_patches
        found = normalise_patches(patches, self.weights, _encoder_target)
        self.weight_patches.append(({t: a for t, a in found.values()}, strength_patch, strength_model))
        return list(found)

    def get_key_patches(self) -> dict:
        """{"<encoder>.transformer.<HF key>": weight with this CLIP's patches} (CLIP merging)."""
        from models.merge import key_patches
        out = {}
        for name in self.weights.components:
            out.update(key_patches(self.weights, self.weight_patches, name, name + ".transformer."))
        return out

    def patched_state_dicts(self) -> dict:
        """state_dicts() with this CLIP's weight patches applied (for saving)."""
        self.weights.apply(self.weight_patches)
        return self.state_dicts()

    def encode_from_tokens(self, tokens: dict, return_pooled=False, return_dict: bool = False):
        from models import memory
        memory.load_models([self], force_full=True)  # the encoders onto their device, whole (as ComfyUI)
        self.weights.apply(self.weight_patches)
        unprojected = return_pooled == "unprojected"
        outputs = {}
        for key, encoder in self.encoders.items():
            if key not in tokens:
                raise ValueError(f"tokens for the {encoder.name} encoder ({key!r}) are missing")
            chunks = [[(t, w) for t, w, *_ in chunk] for chunk in tokens[key]]  # word ids dropped
            outputs[key] = encoder.encode_chunks(chunks, encoder.choice(self.layer_idx, unprojected))
        if self.family == "sdxl":
            (l_out, _), (g_out, pooled) = outputs["l"], outputs["g"]
            n = min(l_out.shape[1], g_out.shape[1])
            cond = torch.cat([l_out[:, :n], g_out[:, :n]], dim=-1)
        else:
            cond, pooled = next(iter(outputs.values()))
        cond, pooled = cond.to(self.output_device), pooled.to(self.output_device)
        if return_dict:
            return {"cond": cond, "pooled_output": pooled}
        return (cond, pooled) if return_pooled else cond

    def encode_from_tokens_scheduled(self, tokens: dict, unprojected: bool = False, add_dict: dict | None = None,
                                     show_pbar: bool = True) -> list:
        """CONDITIONING ([[cond, {"pooled_output": ..., **add_dict}]]), as CLIPTextEncode returns it."""
        out = self.encode_from_tokens(tokens, return_pooled="unprojected" if unprojected else True, return_dict=True)
        cond = out.pop("cond")
        out.update(add_dict or {})
        return [[cond, out]]

    def encode(self, text: str) -> torch.Tensor:
        return self.encode_from_tokens(self.tokenize(text))

    def empty_tokens(self) -> dict:
        return self.tokenize("")

    def state_dicts(self) -> dict:
        """Encoder name -> its HF-layout state dict (for saving and merging)."""
        return {name: model.state_dict() for name, model in self.models.items()}


def build_clip(text_encoders: dict, embedding_lookup: EmbeddingLookup | None = None, family: str | None = None,
               device=None, weight_dtype: torch.dtype | None = torch.float16) -> CLIP:
    """text_encoders: encoder name -> HF-layout state dict (models/checkpoint.py's LoadedCheckpoint.
    text_encoders). Weights are kept in `weight_dtype` (fp16 like ComfyUI), computed in fp32."""
    family = family or family_of(text_encoders)
    models = {name: build_text_model(name, sd, device, weight_dtype) for name, sd in text_encoders.items()}
    return CLIP(family, models, embedding_lookup)


def clip_from_checkpoint(source, embedding_lookup: EmbeddingLookup | None = None, device=None,
                         weight_dtype: torch.dtype | None = torch.float16) -> CLIP:
    """The CLIP of a full checkpoint (path, state dict or TensorSource); only the
    text-encoder tensors are read."""
    from models.checkpoint import load_checkpoint
    loaded = load_checkpoint(source, output_model=False, output_vae=False, text_dtype=weight_dtype)
    if not loaded.text_encoders:
        raise ValueError(f"{loaded.detection.title} checkpoint without text encoder weights")
    return build_clip(loaded.text_encoders, embedding_lookup, None, device, weight_dtype)


def sdxl_tokens(clip: CLIP, text_g: str, text_l: str) -> dict:
    """CLIPTextEncodeSDXL's tokens: text_g for CLIP-G, text_l for CLIP-L, the shorter list
    padded with the chunks of an empty prompt so both have the same number of chunks."""
    tokens = clip.tokenize(text_g)
    tokens["l"] = clip.tokenize(text_l)["l"]
    if len(tokens["l"]) != len(tokens["g"]):
        empty = clip.tokenize("")
        while len(tokens["l"]) < len(tokens["g"]):
            tokens["l"] += empty["l"]
        while len(tokens["g"]) < len(tokens["l"]):
            tokens["g"] += empty["g"]
    return tokens


def text_encoder_kind(sd: dict) -> str:
    """"clip_l", "clip_h" or "clip_g" for a HF-layout text-encoder state dict (by depth and width)."""
    if "text_model.encoder.layers.30.mlp.fc1.weight" in sd:
        return "clip_g"
    if "text_model.encoder.layers.22.mlp.fc1.weight" in sd:
        return "clip_h"
    if "text_model.encoder.layers.0.mlp.fc1.weight" in sd:
        return "clip_l"
    raise ValueError("not a CLIP text encoder (no text_model.encoder.layers.*)")


def text_encoder_state_dict(source) -> dict:
    """A stand-alone text-encoder file (CLIPLoader / DualCLIPLoader) as a HF-layout state dict:
    HF files with or without the `text_model.` level, and OpenCLIP text towers (optionally
    under a checkpoint prefix)."""
    from models.checkpoint import openclip_to_hf
    from models.state_dict import as_source
    src = as_source(source)
    try:
        keys = src.keys()
        hf = [k for k in keys if "text_model.encoder.layers." in k or "text_model.embeddings." in k]
        if hf:
            prefix = hf[0][:hf[0].index("text_model.")]
            sd = src.read([k for k in keys if k.startswith(prefix)], strip=prefix)
            return {k: v for k, v in sd.items() if k.startswith("text_model.") or k in ("text_projection.weight",)}
        oc = [k for k in keys if "transformer.resblocks." in k and not k.startswith("visual.")]
        if oc:
            prefix = oc[0][:oc[0].index("transformer.resblocks.")]
            return openclip_to_hf(src.read([k for k in keys if k.startswith(prefix)], strip=prefix))
        if any(k.startswith("encoder.layers.") for k in keys):  # HF without the text_model. level
            return {"text_model." + k: v for k, v in src.read(keys).items()}
        raise ValueError("the file holds no CLIP text encoder")
    finally:
        if src is not source:
            src.close()


def clip_from_text_encoder_files(sources, embedding_lookup: EmbeddingLookup | None = None, device=None,
                                 weight_dtype: torch.dtype | None = torch.float16) -> CLIP:
    """CLIPLoader (one file) / DualCLIPLoader (CLIP-L + CLIP-G files for SDXL)."""
    encoders = {}
    for source in sources:
        sd = text_encoder_state_dict(source)
        kind = text_encoder_kind(sd)
        if kind in encoders:
            raise ValueError(f"two {kind} text encoders given")
        encoders[kind] = sd
    return build_clip(encoders, embedding_lookup, None, device, weight_dtype)
