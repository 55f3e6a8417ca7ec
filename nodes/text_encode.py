"""Text-encoder nodes: CLIPTextEncode, the SDXL variants, CLIPSetLastLayer and the stand-alone
text-encoder loaders (CLIPLoader, DualCLIPLoader).

The CLIP object (models/clip.py) does the work; these nodes only pick its inputs the way
ComfyUI 0.8.0's nodes do."""
from __future__ import annotations

from models import devices, folders, placement
from models.clip import clip_from_text_encoder_files
from models.embeddings import EmbeddingLibrary

NO_CLIP = ("ERROR: clip input is invalid: None\n\nIf the clip is from a checkpoint loader node your checkpoint "
           "does not contain a valid clip or text encoder model.")


def embedding_library() -> EmbeddingLibrary:
    """The `embedding:name` lookup over every configured embeddings folder."""
    return EmbeddingLibrary(folders.get_folder_paths("embeddings"))


class CLIPTextEncode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": "The text to be encoded."}),
            "clip": ("CLIP", {"tooltip": "The CLIP model used for encoding the text."})}}

    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("A conditioning containing the embedded text used to guide the diffusion model.",)
    FUNCTION = "encode"
    CATEGORY = "conditioning"
    DESCRIPTION = ("Encodes a text prompt using a CLIP model into an embedding that can be used to guide the "
                   "diffusion model towards generating specific images.")

    def encode(self, clip, text):
        if clip is None:
            raise RuntimeError(NO_CLIP)
        return (clip.encode_from_tokens_scheduled(clip.tokenize(text)),)


class CLIPSetLastLayer:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip": ("CLIP",),
                             "stop_at_clip_layer": ("INT", {"default": -1, "min": -24, "max": -1, "step": 1})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "set_last_layer"
    CATEGORY = "conditioning"

    def set_last_layer(self, clip, stop_at_clip_layer):
        clip = clip.clone()
        clip.clip_layer(stop_at_clip_layer)
        return (clip,)


# The families comfyd's text encoders cover, per loader `type`. ComfyUI lists many more types
# (T5, Llama, Gemma... for other model families); those are refused with a clear message.
SINGLE_TYPES = ["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
                "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image", "flux2",
                "ovis"]
DUAL_TYPES = ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image", "hunyuan_video_15", "kandinsky5",
              "kandinsky5_image", "ltxv", "newbie"]
SUPPORTED = {"stable_diffusion": "CLIP-L (SD1.x) or OpenCLIP-H (SD2.x)", "sdxl": "CLIP-L + OpenCLIP-bigG (SDXL)"}


def _load_text_encoders(names: list[str], clip_type: str):
    if clip_type not in SUPPORTED:
        raise ValueError(f"text encoder type {clip_type!r} is not supported by comfyd; supported: "
                         + ", ".join(f"{k} ({v})" for k, v in SUPPORTED.items()))
    paths = [folders.get_full_path_or_raise("text_encoders", n) for n in names]
    clip = placement.place_clip(clip_from_text_encoder_files(paths, embedding_library(),
                                                             weight_dtype=devices.text_encoder_dtype()))
    expected = "sdxl" if clip_type == "sdxl" else ("sd1", "sd2")
    if clip.family not in expected:
        raise ValueError(f"the files {names} make a {clip.family} text encoder, not {SUPPORTED[clip_type]}")
    return clip


class CLIPLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_name": (folders.get_filename_list("text_encoders"),), "type": (SINGLE_TYPES,)},
                "optional": {"device": (["default", "cpu"], {"advanced": True})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"
    CATEGORY = "advanced/loaders"
    DESCRIPTION = ("[Recipes]\n\nstable_diffusion: clip-l\nstable_cascade: clip-g\nsd3: t5 xxl/ clip-g / clip-l\n"
                   "stable_audio: t5 base\nmochi: t5 xxl\ncosmos: old t5 xxl\nlumina2: gemma 2 2B\nwan: umt5 xxl\n"
                   " hidream: llama-3.1 (Recommend) or t5\nomnigen2: qwen vl 2.5 3B")

    def load_clip(self, clip_name, type="stable_diffusion", device="default"):
        return (_load_text_encoders([clip_name], type),)


class DualCLIPLoader:
    @classmethod
    def INPUT_TYPES(cls):
        names = folders.get_filename_list("text_encoders")
        return {"required": {"clip_name1": (names,), "clip_name2": (names,), "type": (DUAL_TYPES,)},
                "optional": {"device": (["default", "cpu"], {"advanced": True})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"
    CATEGORY = "advanced/loaders"
    DESCRIPTION = ("[Recipes]\n\nsdxl: clip-l, clip-g\nsd3: clip-l, clip-g / clip-l, t5 / clip-g, t5\nflux: clip-l, t5\n"
                   "hidream: at least one of t5 or llama, recommended t5 and llama\nhunyuan_image: qwen2.5vl 7b and "
                   "byt5 small\nnewbie: gemma-3-4b-it, jina clip v2")

    def load_clip(self, clip_name1, clip_name2, type, device="default"):
        return (_load_text_encoders([clip_name1, clip_name2], type),)


NODE_CLASS_MAPPINGS = {"CLIPTextEncode": CLIPTextEncode, "CLIPSetLastLayer": CLIPSetLastLayer,
                       "CLIPLoader": CLIPLoader, "DualCLIPLoader": DualCLIPLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"CLIPTextEncode": "CLIP Text Encode (Prompt)", "CLIPSetLastLayer": "CLIP Set Last Layer",
                              "CLIPLoader": "Load CLIP"}
