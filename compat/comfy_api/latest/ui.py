"""`comfy_api.latest.ui`: UI outputs of V3 nodes and the image save helper, over comfyd's
nodes/v3_ui.py and nodes/image_savers.py."""
from nodes import image_savers as _savers
from nodes.v3_types import FolderType
from nodes.v3_ui import PreviewImage, PreviewMask, PreviewText, SavedImages, SavedResult, UIOutput  # noqa: F401


def _result(d: dict) -> SavedResult:
    return SavedResult(d["filename"], d["subfolder"], d["type"])


class ImageSaveHelper:
    """Saving images the way SaveImage / SaveAnimatedPNG / SaveAnimatedWEBP do (counter,
    workflow metadata from the node's hidden prompt / extra_pnginfo)."""

    @staticmethod
    def save_images(images, filename_prefix, folder_type, cls, compress_level=4) -> list:
        return [_result(d) for d in _savers.save_images(images, filename_prefix, folder_type, cls, compress_level)]

    @staticmethod
    def get_save_images_ui(images, filename_prefix, cls, compress_level=4) -> SavedImages:
        return SavedImages(ImageSaveHelper.save_images(images, filename_prefix, FolderType.output, cls,
                                                       compress_level))

    @staticmethod
    def save_animated_png(images, filename_prefix, folder_type, cls, fps, compress_level) -> SavedResult:
        return _result(_savers.save_animated_png(images, filename_prefix, folder_type, cls, fps, compress_level))

    @staticmethod
    def get_save_animated_png_ui(images, filename_prefix, cls, fps, compress_level) -> SavedImages:
        result = ImageSaveHelper.save_animated_png(images, filename_prefix, FolderType.output, cls, fps,
                                                   compress_level)
        return SavedImages([result], is_animated=len(images) > 1)

    @staticmethod
    def save_animated_webp(images, filename_prefix, folder_type, cls, fps, lossless, quality, method) -> SavedResult:
        return _result(_savers.save_animated_webp(images, filename_prefix, folder_type, cls, fps, lossless, quality,
                                                  method))

    @staticmethod
    def get_save_animated_webp_ui(images, filename_prefix, cls, fps, lossless, quality, method) -> SavedImages:
        result = ImageSaveHelper.save_animated_webp(images, filename_prefix, FolderType.output, cls, fps, lossless,
                                                    quality, method)
        return SavedImages([result], is_animated=len(images) > 1)
