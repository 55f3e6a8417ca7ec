"""Loading and saving images: LoadImage, LoadImageMask, LoadImageOutput, SaveImage, PreviewImage
(ComfyUI's nodes.py classes, same inputs and files)."""
from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import random

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, ImageSequence, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from models import folders
from nodes.image_ops import pil_to_tensor, tensor_to_pil  # noqa: F401  (tensor_to_pil re-exported)
from nodes.image_save import get_save_image_path
from nodes.settings import settings

# Extensions whose content type Python's mimetypes does not know (ComfyUI's seed of its cache).
_KNOWN_CONTENT_TYPES = {"webp": "image", "fbx": "model"}


def pillow(fn, arg):
    """Call a Pillow function, retrying once with truncated-image loading allowed (Pillow
    issues 4472/2445: slightly broken files that other viewers open)."""
    try:
        return fn(arg)
    except (OSError, UnidentifiedImageError, ValueError):
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            return fn(arg)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def content_type(filename: str) -> str | None:
    """'image', 'video', 'audio', 'model'... from the file name, or None when unknown."""
    ext = filename.split(".")[-1]
    if ext in _KNOWN_CONTENT_TYPES:
        return _KNOWN_CONTENT_TYPES[ext]
    mime = mimetypes.guess_type(filename, strict=False)[0]
    return mime.split("/")[0] if mime else None


def input_files(only_images: bool) -> list[str]:
    """Sorted top-level files of the input folder (LoadImage keeps only images)."""
    root = folders.state().input
    if not os.path.isdir(root):
        return []
    files = [f for f in os.listdir(root) if os.path.isfile(os.path.join(root, f))]
    if only_images:
        files = [f for f in files if content_type(f) == "image"]
    return sorted(files)


def input_image_files() -> list[str]:
    return input_files(only_images=True)


def file_sha256(name: str) -> str:
    """Hex sha256 of an (annotated) input file: LoadImage re-runs when the file's bytes change."""
    h = hashlib.sha256()
    with open(folders.get_annotated_filepath(name), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def validate_image_file(image: str):
    if not folders.exists_annotated_filepath(image):
        return f"Invalid image file: {image}"
    return True


def _frame_mask(frame: Image.Image) -> torch.Tensor:
    """1 - alpha of a frame; 64x64 zeros when it has no alpha (ComfyUI's 'no mask')."""
    if "A" in frame.getbands():
        alpha = frame.getchannel("A")
    elif frame.mode == "P" and "transparency" in frame.info:
        alpha = frame.convert("RGBA").getchannel("A")
    else:
        return torch.zeros((64, 64), dtype=torch.float32)
    return 1.0 - torch.from_numpy(np.array(alpha).astype(np.float32) / 255.0)


def load_image_file(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every frame of the first frame's size as an RGB batch, with its masks. 32-bit integer
    ('I') images are scaled down by 255; MPO files give only their first frame."""
    img = pillow(Image.open, path)
    try:
        images, masks, size = [], [], None
        for frame in ImageSequence.Iterator(img):
            frame = pillow(ImageOps.exif_transpose, frame)
            if frame.mode == "I":
                frame = frame.point(lambda v: v * (1 / 255))
            rgb = frame.convert("RGB")
            if size is None:
                size = rgb.size
            if rgb.size != size:
                continue
            images.append(pil_to_tensor(rgb))
            masks.append(_frame_mask(frame).unsqueeze(0))
            if img.format == "MPO":
                break
        return torch.cat(images, dim=0), torch.cat(masks, dim=0)
    finally:
        img.close()


class SaveImage:
    def __init__(self):
        self.output_dir = folders.state().output
        self.type = "output"
        self.prefix_append = ""
        self.compress_level = 4

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images to save."}),
                "filename_prefix": ("STRING", {"default": "ComfyUI", "tooltip": "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"
    DESCRIPTION = "Saves the input images to your ComfyUI output directory."

    @staticmethod
    def png_metadata(prompt, extra_pnginfo) -> PngInfo | None:
        """tEXt chunks: `prompt` (the API graph) and one per extra_pnginfo key, as JSON."""
        if settings["disable_metadata"]:
            return None
        info = PngInfo()
        if prompt is not None:
            info.add_text("prompt", json.dumps(prompt))
        if extra_pnginfo is not None:
            for key in extra_pnginfo:
                info.add_text(key, json.dumps(extra_pnginfo[key]))
        return info

    def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        filename_prefix += self.prefix_append
        folder, stem, counter, subfolder, _ = get_save_image_path(
            filename_prefix, self.output_dir, images[0].shape[1], images[0].shape[0])
        results = []
        for batch_number, image in enumerate(images):
            name = f"{stem.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
            tensor_to_pil(image).save(os.path.join(folder, name), pnginfo=self.png_metadata(prompt, extra_pnginfo),
                                      compress_level=self.compress_level)
            results.append({"filename": name, "subfolder": subfolder, "type": self.type})
            counter += 1
        return {"ui": {"images": results}}


class PreviewImage(SaveImage):
    def __init__(self):
        self.output_dir = folders.state().temp
        self.type = "temp"
        # ComfyUI's alphabet, its duplicated 'p' and missing 'w' included
        self.prefix_append = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        self.compress_level = 1

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}


class LoadImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (input_files(only_images=True), {"image_upload": True})}}

    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    def load_image(self, image):
        return load_image_file(folders.get_annotated_filepath(image))

    @classmethod
    def IS_CHANGED(cls, image):
        return file_sha256(image)

    @classmethod
    def VALIDATE_INPUTS(cls, image):
        return validate_image_file(image)


class LoadImageOutput(LoadImage):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("COMBO", {
            "image_upload": True,
            "image_folder": "output",
            "remote": {"route": "/internal/files/output", "refresh_button": True, "control_after_refresh": "first"},
        })}}

    DESCRIPTION = ("Load an image from the output folder. When the refresh button is clicked, the node will update "
                   "the image list and automatically select the first image, allowing for easy iteration.")
    EXPERIMENTAL = True
    FUNCTION = "load_image"


class LoadImageMask:
    _color_channels = ["alpha", "red", "green", "blue"]

    @classmethod
    def INPUT_TYPES(cls):
        # ComfyUI lists every input file here, images or not
        return {"required": {"image": (input_files(only_images=False), {"image_upload": True}),
                             "channel": (cls._color_channels,)}}

    CATEGORY = "mask"
    RETURN_TYPES = ("MASK",)
    FUNCTION = "load_image"

    def load_image(self, image, channel):
        img = pillow(Image.open, folders.get_annotated_filepath(image))
        try:
            i = pillow(ImageOps.exif_transpose, img)
            if i.getbands() != ("R", "G", "B", "A"):
                if i.mode == "I":
                    i = i.point(lambda v: v * (1 / 255))
                i = i.convert("RGBA")
            band = channel[0].upper()
            if band in i.getbands():
                mask = torch.from_numpy(np.array(i.getchannel(band)).astype(np.float32) / 255.0)
                if band == "A":
                    mask = 1.0 - mask
            else:
                mask = torch.zeros((64, 64), dtype=torch.float32)
            return (mask.unsqueeze(0),)
        finally:
            img.close()

    @classmethod
    def IS_CHANGED(cls, image, channel):
        return file_sha256(image)

    @classmethod
    def VALIDATE_INPUTS(cls, image):
        return validate_image_file(image)


NODE_CLASS_MAPPINGS = {"SaveImage": SaveImage, "PreviewImage": PreviewImage, "LoadImage": LoadImage,
                       "LoadImageMask": LoadImageMask, "LoadImageOutput": LoadImageOutput}
NODE_DISPLAY_NAME_MAPPINGS = {"SaveImage": "Save Image", "PreviewImage": "Preview Image", "LoadImage": "Load Image",
                              "LoadImageMask": "Load Image (as Mask)",
                              "LoadImageOutput": "Load Image (from Outputs)"}
