"""TAESD: the tiny autoencoder used for live previews (madebyollin/taesd). Layer indices
match the published taesd_decoder / taesdxl_decoder weight files, so loading is a plain
load_state_dict."""
from __future__ import annotations

import torch
from torch import nn


def _conv(n_in, n_out, **kwargs):
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class _Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


def decoder(latent_channels: int = 4) -> nn.Sequential:
    def up():
        return [nn.Upsample(scale_factor=2), _conv(64, 64, bias=False)]
    return nn.Sequential(
        _Clamp(), _conv(latent_channels, 64), nn.ReLU(),
        _Block(64, 64), _Block(64, 64), _Block(64, 64), *up(),
        _Block(64, 64), _Block(64, 64), _Block(64, 64), *up(),
        _Block(64, 64), _Block(64, 64), _Block(64, 64), *up(),
        _Block(64, 64), _conv(64, 3),
    )


def encoder(latent_channels: int = 4) -> nn.Sequential:
    def down():
        return [_conv(64, 64, stride=2, bias=False), _Block(64, 64), _Block(64, 64), _Block(64, 64)]
    return nn.Sequential(_conv(3, 64), _Block(64, 64), *down(), *down(), *down(), _conv(64, latent_channels))


class TAESDDecoder(nn.Module):
    """Latent -> image in -1..1 ([B, 3, 8h, 8w])."""

    def __init__(self, state_dict: dict | None = None, latent_channels: int = 4):
        super().__init__()
        self.net = decoder(latent_channels)
        if state_dict is not None:
            self.net.load_state_dict(state_dict)

    @torch.no_grad()
    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent.to(next(self.net.parameters()).dtype)).sub(0.5).mul(2)


_cache: dict[str, TAESDDecoder] = {}


def load_decoder(name: str) -> TAESDDecoder | None:
    """The TAESD decoder whose file in models/vae_approx starts with `name`, or None."""
    from models import folders
    candidates = [f for f in folders.get_filename_list("vae_approx") if f.startswith(name)]
    if not candidates:
        return None
    path = folders.get_full_path("vae_approx", candidates[0])
    if path not in _cache:
        if path.endswith((".safetensors", ".sft")):
            from safetensors.torch import load_file
            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        _cache[path] = TAESDDecoder(sd).eval()
    return _cache[path]
