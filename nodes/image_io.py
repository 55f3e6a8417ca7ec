"""Loading and saving images: LoadImage, LoadImageMask, SaveImage, PreviewImage."""
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
from nodes.image_save import get_save_image_path
from nodes.settings import settings


def pillow(fn, arg):
    """Retry with truncated-image loading when Pillow chokes (known Pillow issues)."""
    try:
        return fn(arg)
    except (OSError, UnidentifiedImageError, ValueError):
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            return fn(arg)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def input_image_files() -> list[str]:
    """Top-level image files of the input folder, sorted (LoadImage's list)."""
    root = folders.state().input
    if not os.path.isdir(root):
        return []
    files = [f for f in os.listdir(root) if os.path.isfile(os.path.join(root, f))]
    out = []
    for f in files:
        mime = mimetypes.guess_type(f)[0] or ""
        if mime.startswith("image/") or f.lower().endswith(".webp"):
            out.append(f)
    return sorted(out)


def file_sha256(name: str) -> str:
    h = hashlib.sha256()
    with open(folders.get_annotated_filepath(name), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8))


class SaveImage:
    def __init__(self):
        self.output_dir = folders.state().output
        self.type = "output"
        self.prefix_append = ""
        self.compress_level = 4

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The images to save."}),
            "filename_prefix": ("STRING", {"default": "ComfyUI", "tooltip": "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."})},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"
    DESCRIPTION = "Saves the input images to your ComfyUI output directory."

    def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        filename_prefix += self.prefix_append
        folder, stem, counter, subfolder, _ = get_save_image_path(
            filename_prefix, self.output_dir, images[0].shape[1], images[0].shape[0])
        results = []
        for batch_number, image in enumerate(images):
            metadata = None
            if not settings["disable_metadata"]:
                metadata = PngInfo()
                if prompt is not None:
                    metadata.add_text("prompt", json.dumps(prompt))
                for key, value in (extra_pnginfo or {}).items():
                    metadata.add_text(key, json.dumps(value))
            name = f"{stem.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
            tensor_to_pil(image).save(os.path.join(folder, name), pnginfo=metadata, compress_level=self.compress_level)
            results.append({"filename": name, "subfolder": subfolder, "type": self.type})
            counter += 1
        return {"ui": {"images": results}}


class PreviewImage(SaveImage):
    def __init__(self):
        self.output_dir = folders.state().temp
        self.type = "temp"
        # ComfyUI's alphabet, typo and all
        self.prefix_append = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        self.compress_level = 1

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}



class LoadImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (input_image_files(), {"image_upload": True})}}

    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    def load_image(self, image):
        img = pillow(Image.open, folders.get_annotated_filepath(image))
        images, masks, size = [], [], None
        for frame in ImageSequence.Iterator(img):
            frame = pillow(ImageOps.exif_transpose, frame)
            if frame.mode == "I":
                frame = frame.point(lambda v: v * (1 / 255))
            rgb = frame.convert("RGB")
            if size is None:
                size = rgb.size
            if rgb.size != size:  # frames of another size are skipped
                continue
            images.append(torch.from_numpy(np.array(rgb).astype(np.float32) / 255.0)[None,])
            if "A" in frame.getbands():
                alpha = np.array(frame.getchannel("A")).astype(np.float32) / 255.0
                mask = 1.0 - torch.from_numpy(alpha)
            elif frame.mode == "P" and "transparency" in frame.info:
                alpha = np.array(frame.convert("RGBA").getchannel("A")).astype(np.float32) / 255.0
                mask = 1.0 - torch.from_numpy(alpha)
            else:
                mask = torch.zeros((64, 64), dtype=torch.float32)
            masks.append(mask.unsqueeze(0))
            if img.format == "MPO":
                break  # only the first frame of MPO files
        return torch.cat(images, dim=0), torch.cat(masks, dim=0)

    @classmethod
    def IS_CHANGED(cls, image):
        return file_sha256(image)

    @classmethod
    def VALIDATE_INPUTS(cls, image):
        if not folders.exists_annotated_filepath(image):
            return f"Invalid image file: {image}"
        return True


class LoadImageMask:
    _channels = ["alpha", "red", "green", "blue"]

    @classmethod
    def INPUT_TYPES(cls):
        root = folders.state().input
        files = sorted(f for f in os.listdir(root) if os.path.isfile(os.path.join(root, f))) if os.path.isdir(root) else []
        return {"required": {"image": (files, {"image_upload": True}), "channel": (cls._channels,)}}

    CATEGORY = "mask"
    RETURN_TYPES = ("MASK",)
    FUNCTION = "load_image"

    def load_image(self, image, channel):
        i = pillow(Image.open, folders.get_annotated_filepath(image))
        i = pillow(ImageOps.exif_transpose, i)
        if i.getbands() != ("R", "G", "B", "A"):
            if i.mode == "I":
                i = i.point(lambda v: v * (1 / 255))
            i = i.convert("RGBA")
        c = channel[0].upper()
        if c in i.getbands():
            mask = torch.from_numpy(np.array(i.getchannel(c)).astype(np.float32) / 255.0)
            if c == "A":
                mask = 1.0 - mask
        else:
            mask = torch.zeros((64, 64), dtype=torch.float32)
        return (mask.unsqueeze(0),)

    @classmethod
    def IS_CHANGED(cls, image, channel):
        return file_sha256(image)

    @classmethod
    def VALIDATE_INPUTS(cls, image):
        if not folders.exists_annotated_filepath(image):
            return f"Invalid image file: {image}"
        return True


NODE_CLASS_MAPPINGS = {"SaveImage": SaveImage, "PreviewImage": PreviewImage, "LoadImage": LoadImage,
                       "LoadImageMask": LoadImageMask}
NODE_DISPLAY_NAME_MAPPINGS = {"SaveImage": "Save Image", "PreviewImage": "Preview Image", "LoadImage": "Load Image",
                              "LoadImageMask": "Load Image (as Mask)"}
