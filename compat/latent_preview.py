"""ComfyUI's `latent_preview` for custom node packs: the sampling step callback that sends
progress and (with --preview-method) preview images, over comfyd's previewers."""
from __future__ import annotations

from models.sampling import preview as _preview
from models.sampling.preview import Latent2RGB, TAESDPreview  # noqa: F401

MAX_PREVIEW_RESOLUTION = 512


def preview_to_image(latent_image, do_scale=True):
    return _preview.to_image(latent_image, do_scale)


class LatentPreviewer:
    """ComfyUI's previewer interface over a comfyd previewer (which has `decode(x0)`)."""

    def __init__(self, inner):
        self.inner = inner

    def decode_latent_to_preview(self, x0):
        return self.inner.decode(x0)

    def decode_latent_to_preview_image(self, preview_format, x0):
        return preview_format, self.inner.decode(x0), MAX_PREVIEW_RESOLUTION


def get_previewer(device, latent_format):
    """None when previews are off (or the family has no previewer)."""
    inner = _preview.get_previewer(latent_format)
    return None if inner is None else LatentPreviewer(inner)


def prepare_callback(model, steps, x0_output_dict=None):
    """callback(step, x0, x, total_steps), as KSampler uses it."""
    from nodes.sampling import step_callback
    return step_callback(model, steps, x0_output_dict)


def set_preview_method(override: str = None):
    _preview.set_prompt_override(override if override not in (None, "default") else None)
