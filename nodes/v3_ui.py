"""UI outputs of V3 nodes (`comfy_api.latest.ui`): saved or previewed files as the dicts that
land in `executed.output` and history."""
from __future__ import annotations

import os
import random

from models import folders
from nodes.image_io import tensor_to_pil
from nodes.image_save import get_save_image_path


class UIOutput:
    def as_dict(self) -> dict:
        raise NotImplementedError


class SavedResult(dict):
    def __init__(self, filename: str, subfolder: str, type):
        super().__init__(filename=filename, subfolder=subfolder, type=getattr(type, "value", type))


class SavedImages(UIOutput):
    def __init__(self, results: list, is_animated: bool = False):
        self.results, self.is_animated = results, is_animated

    def as_dict(self):
        data = {"images": self.results}
        if self.is_animated:
            data["animated"] = (True,)
        return data


def _save_preview_images(images) -> list:
    prefix = "ComfyUI_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
    folder, stem, counter, subfolder, _ = get_save_image_path(prefix, folders.state().temp,
                                                              images[0].shape[1], images[0].shape[0])
    results = []
    for i, image in enumerate(images):
        name = f"{stem}_{counter + i:05}_.png"
        tensor_to_pil(image).save(os.path.join(folder, name), compress_level=1)
        results.append(SavedResult(name, subfolder, "temp"))
    return results


class PreviewImage(UIOutput):
    def __init__(self, image, animated: bool = False, cls=None, **kwargs):
        self.values, self.animated = _save_preview_images(image), animated

    def as_dict(self):
        return {"images": self.values, "animated": (self.animated,)}


class PreviewMask(PreviewImage):
    def __init__(self, mask, animated: bool = False, cls=None, **kwargs):
        preview = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3)
        super().__init__(preview, animated, cls, **kwargs)


class PreviewText(UIOutput):
    def __init__(self, value: str, **kwargs):
        self.value = value

    def as_dict(self):
        return {"text": (self.value,)}
