"""The versioned ComfyAPI object (`comfy_api.v0_0_2`): progress reporting from inside a node."""
from __future__ import annotations

from models.progress import report_progress


class _Execution:
    def _set(self, value, max_value=1.0, node_id=None, preview_image=None, ignore_size_limit=False):
        preview = None
        if isinstance(preview_image, tuple):  # already (format, PIL image, max size)
            preview = preview_image
        elif preview_image is not None:
            from PIL import Image
            image = preview_image
            if not isinstance(image, Image.Image):  # IMAGE tensor [B,H,W,C] or [H,W,C]
                import numpy as np
                t = image[0] if image.ndim == 4 else image
                image = Image.fromarray((t.clamp(0, 1) * 255).byte().cpu().numpy().astype(np.uint8))
            from comfy.cli_args import args
            fmt = "PNG" if image.format == "PNG" else "JPEG"  # the two formats preview frames carry
            preview = (fmt, image, None if ignore_size_limit else args.preview_size)
        report_progress(value, max_value, preview, node_id, legacy_event=False)


class _AsyncExecution(_Execution):
    async def set_progress(self, value, max_value, node_id=None, preview_image=None, ignore_size_limit=False):
        self._set(value, max_value, node_id, preview_image, ignore_size_limit)


class _SyncExecution(_Execution):
    def set_progress(self, value, max_value, node_id=None, preview_image=None, ignore_size_limit=False):
        self._set(value, max_value, node_id, preview_image, ignore_size_limit)


class ComfyAPI:
    def __init__(self):
        self.execution = _AsyncExecution()


class ComfyAPISync:
    def __init__(self):
        self.execution = _SyncExecution()
