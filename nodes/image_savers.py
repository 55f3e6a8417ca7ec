"""Image writers with ComfyUI's metadata conventions, shared by V3 nodes (and usable as
`comfy_api.latest.ui.ImageSaveHelper`): PNG batches, animated PNG (metadata in private `comf`
chunks after the image data) and animated WEBP (metadata in EXIF Model/Make tags); plus the
SaveAnimatedPNG / SaveAnimatedWEBP nodes of comfy_extras/nodes_images."""
from __future__ import annotations

import json
import os

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from models import folders
from nodes import v3 as io
from nodes.image_ops import tensor_to_pil
from nodes.image_save import get_save_image_path
from nodes.settings import settings


def _dir_of(folder_type: str) -> str:
    return folders.get_directory_by_type(getattr(folder_type, "value", folder_type)) or folders.state().temp


def _hidden(cls):
    """(prompt, extra_pnginfo) of a V3 node class's current call, or (None, None)."""
    hidden = getattr(cls, "hidden", None) if cls is not None else None
    if settings["disable_metadata"] or not hidden:
        return None, None
    return hidden.prompt, hidden.extra_pnginfo


def png_metadata(cls) -> PngInfo | None:
    """tEXt chunks for V3 savers: `prompt` and one per extra_pnginfo key (empty values skipped)."""
    if settings["disable_metadata"] or cls is None or not getattr(cls, "hidden", None):
        return None
    prompt, extra = _hidden(cls)
    info = PngInfo()
    if prompt:
        info.add_text("prompt", json.dumps(prompt))
    for key in extra or {}:
        info.add_text(key, json.dumps(extra[key]))
    return info


def animated_png_metadata(cls) -> PngInfo | None:
    """APNG keeps metadata in `comf` chunks after the frames: b"<key>\\0<json>" (latin-1)."""
    if settings["disable_metadata"] or cls is None or not getattr(cls, "hidden", None):
        return None
    prompt, extra = _hidden(cls)
    info = PngInfo()
    entries = ([("prompt", prompt)] if prompt else []) + [(k, extra[k]) for k in (extra or {})]
    for key, value in entries:
        info.add(b"comf", key.encode("latin-1", "strict") + b"\0" + json.dumps(value).encode("latin-1", "strict"),
                 after_idat=True)
    return info


def webp_exif(image: Image.Image, cls) -> Image.Exif:
    """EXIF for WEBP: Model (0x0110) = "prompt:<json>", then Make (0x010F) and downwards = "<key>:<json>"."""
    exif = image.getexif()
    if settings["disable_metadata"] or cls is None or getattr(cls, "hidden", None) is None:
        return exif
    prompt, extra = cls.hidden.prompt, cls.hidden.extra_pnginfo
    if prompt is not None:
        exif[0x0110] = f"prompt:{json.dumps(prompt)}"
    tag = 0x010F
    for key, value in (extra or {}).items():
        exif[tag] = f"{key}:{json.dumps(value)}"
        tag -= 1
    return exif


def save_images(images, filename_prefix: str, folder_type, cls=None, compress_level: int = 4) -> list[dict]:
    """One PNG per batch image, numbered like SaveImage."""
    folder, stem, counter, subfolder, _ = get_save_image_path(filename_prefix, _dir_of(folder_type),
                                                              images[0].shape[1], images[0].shape[0])
    metadata, results = png_metadata(cls), []
    for batch_number, image in enumerate(images):
        name = f"{stem.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        tensor_to_pil(image).save(os.path.join(folder, name), pnginfo=metadata, compress_level=compress_level)
        results.append({"filename": name, "subfolder": subfolder, "type": getattr(folder_type, "value", folder_type)})
        counter += 1
    return results


def save_animated_png(images, filename_prefix: str, folder_type, cls, fps: float, compress_level: int) -> dict:
    folder, stem, counter, subfolder, _ = get_save_image_path(filename_prefix, _dir_of(folder_type),
                                                              images[0].shape[1], images[0].shape[0])
    frames = [tensor_to_pil(i) for i in images]
    name = f"{stem}_{counter:05}_.png"
    frames[0].save(os.path.join(folder, name), pnginfo=animated_png_metadata(cls), compress_level=compress_level,
                   save_all=True, duration=int(1000.0 / fps), append_images=frames[1:])
    return {"filename": name, "subfolder": subfolder, "type": getattr(folder_type, "value", folder_type)}


def save_animated_webp(images, filename_prefix: str, folder_type, cls, fps: float, lossless: bool, quality: int,
                       method: int) -> dict:
    folder, stem, counter, subfolder, _ = get_save_image_path(filename_prefix, _dir_of(folder_type),
                                                              images[0].shape[1], images[0].shape[0])
    frames = [tensor_to_pil(i) for i in images]
    name = f"{stem}_{counter:05}_.webp"
    frames[0].save(os.path.join(folder, name), save_all=True, duration=int(1000.0 / fps),
                   append_images=frames[1:], exif=webp_exif(frames[0], cls), lossless=lossless, quality=quality,
                   method=method)
    return {"filename": name, "subfolder": subfolder, "type": getattr(folder_type, "value", folder_type)}


def _animated_ui(result: dict, frames: int) -> dict:
    ui = {"images": [result]}
    if frames > 1:
        ui["animated"] = (True,)
    return ui


class SaveAnimatedWEBP(io.ComfyNode):
    COMPRESS_METHODS = {"default": 4, "fastest": 0, "slowest": 6}

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SaveAnimatedWEBP", category="image/animation",
                         inputs=[io.Image.Input("images"), io.String.Input("filename_prefix", default="ComfyUI"),
                                 io.Float.Input("fps", default=6.0, min=0.01, max=1000.0, step=0.01),
                                 io.Boolean.Input("lossless", default=True),
                                 io.Int.Input("quality", default=80, min=0, max=100),
                                 io.Combo.Input("method", options=list(cls.COMPRESS_METHODS.keys()))],
                         hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo], is_output_node=True)

    @classmethod
    def execute(cls, images, fps, filename_prefix, lossless, quality, method, num_frames=0):
        result = save_animated_webp(images, filename_prefix, "output", cls, fps, lossless, quality,
                                    cls.COMPRESS_METHODS.get(method))
        return io.NodeOutput(ui=_animated_ui(result, len(images)))

    save_images = execute


class SaveAnimatedPNG(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SaveAnimatedPNG", category="image/animation",
                         inputs=[io.Image.Input("images"), io.String.Input("filename_prefix", default="ComfyUI"),
                                 io.Float.Input("fps", default=6.0, min=0.01, max=1000.0, step=0.01),
                                 io.Int.Input("compress_level", default=4, min=0, max=9)],
                         hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo], is_output_node=True)

    @classmethod
    def execute(cls, images, fps, compress_level, filename_prefix="ComfyUI"):
        result = save_animated_png(images, filename_prefix, "output", cls, fps, compress_level)
        return io.NodeOutput(ui=_animated_ui(result, len(images)))

    save_images = execute


V3_NODES = [SaveAnimatedWEBP, SaveAnimatedPNG]
