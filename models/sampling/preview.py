"""Live previews of the latent while sampling: latent2rgb (a linear map per family) or
TAESD (a tiny decoder, when its weights are in models/vae_approx).

A previewer turns the current x0 estimate into ("JPEG", PIL image, max size), the form
the progress hook carries to the WebSocket."""
from __future__ import annotations

import logging
import threading

import torch
from PIL import Image

from models import progress

METHODS = ("none", "auto", "latent2rgb", "taesd")
log = logging.getLogger(__name__)

# The server's --preview-method / --preview-size; a prompt's extra_data.preview_method overrides
# the method for that prompt only (set_prompt_override).
_default = {"method": "none", "size": 512}
_override: dict = {"method": None}
_thread_override = threading.local()  # threads of a --batch-prompts group: one prompt each


def configure(method: str = "none", size: int = 512) -> None:
    _default.update(method=method, size=size)


def set_prompt_override(method: str | None) -> None:
    """Per-prompt choice; None or "default" falls back to the server setting."""
    chosen = method if method in METHODS else None
    if progress.thread_bound():
        _thread_override.method = chosen
    else:
        _override["method"] = chosen


def active_method() -> str:
    override = getattr(_thread_override, "method", None) if progress.thread_bound() else _override["method"]
    return override or _default["method"]


def to_image(rgb: torch.Tensor, scaled: bool = True) -> Image.Image:
    """[H, W, 3] in -1..1 (or 0..1 when not scaled) -> an 8-bit PIL image."""
    if scaled:
        rgb = (rgb + 1.0) / 2.0
    data = rgb.clamp(0, 1).mul(0xFF).to(device="cpu", dtype=torch.uint8)
    return Image.fromarray(data.numpy())


class Latent2RGB:
    def __init__(self, factors, bias=None):
        self.factors = torch.tensor(factors).transpose(0, 1)
        self.bias = torch.tensor(bias) if bias is not None else None

    def decode(self, x0: torch.Tensor) -> Image.Image:
        first = x0[0]
        w = self.factors.to(dtype=first.dtype, device=first.device)
        b = self.bias.to(dtype=first.dtype, device=first.device) if self.bias is not None else None
        return to_image(torch.nn.functional.linear(first.movedim(0, -1), w, bias=b))


class TAESDPreview:
    def __init__(self, decoder):
        self.decoder = decoder

    def decode(self, x0: torch.Tensor) -> Image.Image:
        return to_image(self.decoder(x0[:1])[0].movedim(0, 2))


def get_previewer(latent_format, taesd_loader=None):
    """The previewer for the active method, or None. `taesd_loader(name)` returns a decoder
    module for a TAESD weight name, or None when the file is absent."""
    method = active_method()
    if method == "none":
        return None
    if taesd_loader is None:
        from models.taesd import load_decoder as taesd_loader
    if method == "taesd" and latent_format.taesd_decoder_name:
        decoder = taesd_loader(latent_format.taesd_decoder_name)
        if decoder is not None:
            return TAESDPreview(decoder)
        log.warning("TAESD previews asked for, but models/vae_approx/%s* is missing; using latent2rgb",
                    latent_format.taesd_decoder_name)
    if latent_format.latent_rgb_factors is None:
        return None
    return Latent2RGB(latent_format.latent_rgb_factors, latent_format.latent_rgb_factors_bias)


def preview_payload(previewer, x0):
    if previewer is None:
        return None
    return ("JPEG", previewer.decode(x0), _default["size"])
