"""ControlNet preprocessors with the class names, inputs and outputs of the third-party pack
comfyui_controlnet_aux (Fannovel16), built in so that workflows that use them (the project's
seed workflow among them) run without the pack: HED soft edges and its scribble variant
(weights ControlNetHED.pth from models/annotators), and the detectors that need no network:
Scribble (threshold), Scribble XDoG, Canny (OpenCV), Binary, Standard Lineart.

/object_info reports them as `custom_nodes.comfyui_controlnet_aux`, where a ComfyUI with the
pack installed has them, so clients and the frontend see the same thing.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

from models import folders
from models.hed import FILE_NAME as HED_FILE, HF_SUBDIR, hed_edges, load_hed
from nodes.preprocessor_common import (preprocessor_inputs, quantise_safe, resize_with_pad, resolution_input,
                                       run_per_image, scribble_from_edges, to_three_channels)

CATEGORY = "ControlNet Preprocessors/Line Extractors"
PACK_DIR = "comfyui_controlnet_aux"


def _int(default, minimum=0, maximum=255):
    return ("INT", {"default": default, "min": minimum, "max": maximum, "step": 1})


def annotator_candidates(file_name: str) -> list[str]:
    """Where an annotator weight file may be: models/annotators (flat, or in the pack's
    lllyasviel/Annotators layout), $AUX_ANNOTATOR_CKPTS_PATH, and the pack's own ckpts folder."""
    roots = [(root, "") for root in folders.get_folder_paths("annotators")]
    if os.environ.get("AUX_ANNOTATOR_CKPTS_PATH"):
        roots.append((os.environ["AUX_ANNOTATOR_CKPTS_PATH"], HF_SUBDIR))
    if "custom_nodes" in folders.model_kinds():
        roots += [(os.path.join(root, PACK_DIR, "ckpts"), HF_SUBDIR) for root in folders.get_folder_paths("custom_nodes")]
    out = []
    for root, sub in roots:
        if not sub:
            out.append(os.path.join(root, file_name))
            sub = HF_SUBDIR
        out.append(os.path.join(root, sub, file_name))
    return out


def find_annotator(file_name: str, node: str) -> str:
    candidates = annotator_candidates(file_name)
    for path in candidates:
        if os.path.isfile(path):
            return path
    folder_list = ", ".join(folders.get_folder_paths("annotators")) or "(none configured)"
    raise FileNotFoundError(
        f"{node} needs the weight file {file_name} (from the Hugging Face repo lllyasviel/Annotators), "
        f"which was not found. Put it in an 'annotators' model folder ({folder_list}), directly or under "
        f"{HF_SUBDIR}/. Looked for: {'; '.join(candidates)}")


def _hed_map(image, resolution, safe: bool, scribble: bool):
    model = load_hed(find_annotator(HED_FILE, "FakeScribblePreprocessor" if scribble else "HEDPreprocessor"))

    def detect(pixels, res):
        padded, crop = resize_with_pad(pixels, res, cv2.INTER_CUBIC)
        edge = hed_edges(model, padded)
        if safe:
            edge = quantise_safe(edge)
        edge = (edge * 255.0).clip(0, 255).astype(np.uint8)
        if scribble:
            edge = scribble_from_edges(edge)
        return to_three_channels(crop(edge))
    return run_per_image(detect, image, resolution)


class HED_Preprocessor:
    @classmethod
    def INPUT_TYPES(cls):
        return preprocessor_inputs(safe=(["enable", "disable"], {"default": "enable"}), resolution=resolution_input())

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "execute"
    CATEGORY = CATEGORY

    def execute(self, image, resolution=512, safe="enable", **kwargs):
        return (_hed_map(image, resolution, safe == "enable", scribble=False),)


class Fake_Scribble_Preprocessor(HED_Preprocessor):
    def execute(self, image, resolution=512, safe="enable", **kwargs):
        return (_hed_map(image, resolution, safe == "enable", scribble=True),)


def _scribble(pixels, res):
    img, crop = resize_with_pad(pixels, res, cv2.INTER_AREA)
    marked = np.zeros_like(img, dtype=np.uint8)
    marked[np.min(img, axis=2) < 127] = 255
    return crop(255 - marked)


class Scribble_Preprocessor:
    @classmethod
    def INPUT_TYPES(cls):
        return preprocessor_inputs(resolution=resolution_input())

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "execute"
    CATEGORY = CATEGORY

    def execute(self, image, resolution=512, **kwargs):
        return (run_per_image(_scribble, image, resolution),)


class Scribble_XDoG_Preprocessor:
    @classmethod
    def INPUT_TYPES(cls):
        return preprocessor_inputs(threshold=_int(32, 1, 64), resolution=resolution_input())

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "execute"
    CATEGORY = CATEGORY

    def execute(self, image, threshold=32, resolution=512, **kwargs):
        def detect(pixels, res):
            img, crop = resize_with_pad(pixels, res, cv2.INTER_CUBIC)
            fine = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.5)
            coarse = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 5.0)
            dog = (255 - np.min(coarse - fine, axis=2)).clip(0, 255).astype(np.uint8)
            out = np.zeros_like(img, dtype=np.uint8)
            out[2 * (255 - dog) > threshold] = 255
            return to_three_channels(crop(out))
        return (run_per_image(detect, image, resolution),)


class Canny_Edge_Preprocessor:
    @classmethod
    def INPUT_TYPES(cls):
        return preprocessor_inputs(low_threshold=_int(100), high_threshold=_int(200), resolution=resolution_input())

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "execute"
    CATEGORY = CATEGORY

    def execute(self, image, low_threshold=100, high_threshold=200, resolution=512, **kwargs):
        def detect(pixels, res):
            img, crop = resize_with_pad(pixels, res, cv2.INTER_CUBIC)
            return to_three_channels(crop(cv2.Canny(img, low_threshold, high_threshold)))
        return (run_per_image(detect, image, resolution),)


class Binary_Preprocessor:
    @classmethod
    def INPUT_TYPES(cls):
        return preprocessor_inputs(bin_threshold=_int(100), resolution=resolution_input())

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "execute"
    CATEGORY = CATEGORY

    def execute(self, image, bin_threshold=100, resolution=512, **kwargs):
        def detect(pixels, res):
            img, crop = resize_with_pad(pixels, res, cv2.INTER_CUBIC)
            grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
            if bin_threshold in (0, 255):  # Otsu picks the threshold
                _, dark = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
            else:
                _, dark = cv2.threshold(grey, bin_threshold, 255, cv2.THRESH_BINARY_INV)
            return to_three_channels(crop(255 - cv2.cvtColor(dark, cv2.COLOR_GRAY2RGB)))
        return (run_per_image(detect, image, resolution),)


class Lineart_Standard_Preprocessor:
    @classmethod
    def INPUT_TYPES(cls):
        return preprocessor_inputs(guassian_sigma=("FLOAT", {"default": 6.0, "min": 0, "max": 100.0, "step": 0.01}),
                                   intensity_threshold=_int(8, 0, 16), resolution=resolution_input())

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "execute"
    CATEGORY = CATEGORY

    def execute(self, image, guassian_sigma=6.0, intensity_threshold=8, resolution=512, **kwargs):
        def detect(pixels, res):
            img, crop = resize_with_pad(pixels, res, cv2.INTER_CUBIC)
            x = img.astype(np.float32)
            blurred = cv2.GaussianBlur(x, (0, 0), guassian_sigma)
            intensity = np.min(blurred - x, axis=2).clip(0, 255)
            strong = intensity[intensity > intensity_threshold]
            # the pack divides by max(16, median); with no strong pixel the median is NaN and 16 wins
            intensity /= max(16, float(np.median(strong))) if strong.size else 16
            intensity *= 127
            return to_three_channels(crop(intensity.clip(0, 255).astype(np.uint8)))
        return (run_per_image(detect, image, resolution),)


NODE_CLASS_MAPPINGS = {
    "HEDPreprocessor": HED_Preprocessor,
    "FakeScribblePreprocessor": Fake_Scribble_Preprocessor,
    "ScribblePreprocessor": Scribble_Preprocessor,
    "Scribble_XDoG_Preprocessor": Scribble_XDoG_Preprocessor,
    "CannyEdgePreprocessor": Canny_Edge_Preprocessor,
    "BinaryPreprocessor": Binary_Preprocessor,
    "LineartStandardPreprocessor": Lineart_Standard_Preprocessor,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "HEDPreprocessor": "HED Soft-Edge Lines",
    "FakeScribblePreprocessor": "Fake Scribble Lines (aka scribble_hed)",
    "ScribblePreprocessor": "Scribble Lines",
    "Scribble_XDoG_Preprocessor": "Scribble XDoG Lines",
    "CannyEdgePreprocessor": "Canny Edge",
    "BinaryPreprocessor": "Binary Lines",
    "LineartStandardPreprocessor": "Standard Lineart",
}
