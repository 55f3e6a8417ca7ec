"""The KL-f8 autoencoder of SD1.x / SD2.x / SDXL, and the VAE as nodes use it.

Attribute names are the checkpoint's keys under `first_stage_model.` (or a bare VAE
file): `encoder.conv_in`, `encoder.down.N.block.M`, `encoder.down.N.downsample.conv`,
`encoder.mid.{block_1,attn_1,block_2}`, `encoder.norm_out`, `encoder.conv_out`,
`quant_conv`, `post_quant_conv`, `decoder.conv_in`, `decoder.mid.*`, `decoder.up.N.block.M`,
`decoder.up.N.upsample.conv`, `decoder.norm_out`, `decoder.conv_out`.

The VAE works in the raw latent space: the family's scale factor (0.18215 / 0.13025) is
applied by the sampler through the latent format, not here. Pixels follow ComfyUI's IMAGE
convention: encode takes [B,H,W,C] in 0..1 (as 2x-1), decode returns
clamp((x+1)/2, 0, 1) as [B,H,W,3]; encode returns the posterior mode (the mean).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models import compiled, devices, memory, ops
from models.state_dict import as_source

log = logging.getLogger(__name__)


def Normalize(channels):
    return ops.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.norm1 = Normalize(in_channels)
        self.conv1 = ops.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = Normalize(out_channels)
        self.conv2 = ops.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = ops.Conv2d(in_channels, out_channels, 1)
        else:
            self.nin_shortcut = None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels (1x1 convs for q, k, v, proj_out)."""

    def __init__(self, channels):
        super().__init__()
        self.norm = Normalize(channels)
        self.q = ops.Conv2d(channels, channels, 1)
        self.k = ops.Conv2d(channels, channels, 1)
        self.v = ops.Conv2d(channels, channels, 1)
        self.proj_out = ops.Conv2d(channels, channels, 1)

    def forward(self, x):
        h = self.norm(x)
        b, c, hh, ww = h.shape
        q, k, v = (t.view(b, 1, c, hh * ww).transpose(2, 3) for t in (self.q(h), self.k(h), self.v(h)))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, hh, ww))


class Downsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = ops.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, right and bottom


class Upsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = ops.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the encoder (`down.N`) or decoder (`up.N`)."""

    def __init__(self, blocks):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList()


class Mid(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


@dataclass
class VAEConfig:
    ch: int = 128
    ch_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    in_channels: int = 3
    out_ch: int = 3


class Encoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        self.conv_in = ops.Conv2d(c.in_channels, c.ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = c.ch
        for i, mult in enumerate(c.ch_mult):
            blocks = []
            for _ in range(c.num_res_blocks):
                blocks.append(ResnetBlock(block_in, c.ch * mult))
                block_in = c.ch * mult
            level = Level(blocks)
            if i != len(c.ch_mult) - 1:
                level.downsample = Downsample(block_in)
            self.down.append(level)
        self.mid = Mid(block_in)
        self.norm_out = Normalize(block_in)
        self.conv_out = ops.Conv2d(block_in, 2 * c.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        block_in = c.ch * c.ch_mult[-1]
        self.conv_in = ops.Conv2d(c.z_channels, block_in, 3, padding=1)
        self.mid = Mid(block_in)
        levels = []
        for i in reversed(range(len(c.ch_mult))):
            blocks = []
            for _ in range(c.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, c.ch * c.ch_mult[i]))
                block_in = c.ch * c.ch_mult[i]
            level = Level(blocks)
            if i != 0:
                level.upsample = Upsample(block_in)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)  # up.0 is the full-resolution level, run last
        self.norm_out = Normalize(block_in)
        self.conv_out = ops.Conv2d(block_in, c.out_ch, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    def __init__(self, c: VAEConfig, with_encoder: bool = True):
        super().__init__()
        self.config = c
        if with_encoder:
            self.encoder = Encoder(c)
            self.quant_conv = ops.Conv2d(2 * c.z_channels, 2 * c.z_channels, 1)
        self.post_quant_conv = ops.Conv2d(c.z_channels, c.z_channels, 1)
        self.decoder = Decoder(c)

    def encode_moments(self, x):
        """[B,3,H,W] in -1..1 -> [B, 2z, H/8, W/8]: posterior mean, then log-variance."""
        return self.quant_conv(self.encoder(x))

    def encode(self, x):
        return self.encode_moments(x).chunk(2, dim=1)[0]  # the posterior mode

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))


def vae_config_from_state_dict(source, prefix: str = "") -> VAEConfig:
    """Read the widths from the shapes; raises ValueError when there is no KL VAE there."""
    src = as_source(source)
    keys = [k for k in src.keys() if k.startswith(prefix)]
    if prefix + "decoder.conv_in.weight" not in src:
        if any(k.startswith(prefix + "decoder.up_blocks.") for k in keys):
            raise ValueError("diffusers-format VAE files are not supported yet")
        raise ValueError("no VAE decoder (decoder.conv_in.weight) in this state dict")
    z_channels = src.shape(prefix + "decoder.conv_in.weight")[1]
    top = src.shape(prefix + "decoder.conv_in.weight")[0]
    levels = sorted({int(k[len(prefix) + len("decoder.up."):].split(".")[0]) for k in keys
                     if k.startswith(prefix + "decoder.up.")})
    ch = src.shape(prefix + "decoder.conv_out.weight")[1]
    mult = tuple(src.shape(f"{prefix}decoder.up.{i}.block.0.conv2.weight")[0] // ch for i in levels)
    blocks = len({k[len(prefix):].split(".")[4] for k in keys if k.startswith(prefix + "decoder.up.0.block.")}) - 1
    c = VAEConfig(ch=ch, ch_mult=mult, num_res_blocks=blocks, z_channels=z_channels,
                  out_ch=src.shape(prefix + "decoder.conv_out.weight")[0])
    if c.ch * c.ch_mult[-1] != top:
        raise ValueError(f"inconsistent VAE decoder widths: conv_in {top} vs levels {mult} x {ch}")
    if prefix + "encoder.conv_in.weight" in src:
        c.in_channels = src.shape(prefix + "encoder.conv_in.weight")[1]
    return c


class VAE:
    """The VAE as the VAEEncode / VAEDecode nodes use it (ComfyUI's `comfy.sd.VAE` shape)."""

    downscale_ratio = 8
    upscale_ratio = 8
    latent_channels = 4

    def __init__(self, model: AutoencoderKL, device="cpu", dtype=torch.float32, batch_pixels: int = 1 << 22):
        self.first_stage_model = model.eval()
        self.device = torch.device(device)  # where it runs; the weights rest on offload_device between uses
        self.offload_device = torch.device("cpu")
        self.vae_dtype = dtype
        self.output_device = torch.device("cpu")
        self.batch_pixels = batch_pixels  # pixels per chunk of a batch (memory bound)
        self.latent_channels = model.config.z_channels
        self.output_channels = model.config.out_ch

    @staticmethod
    def process_input(image):
        return image * 2.0 - 1.0

    @staticmethod
    def process_output(image):
        return torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)

    def spacial_compression_encode(self):
        return self.downscale_ratio

    def spacial_compression_decode(self):
        return self.upscale_ratio

    def _per_chunk(self, h, w) -> int:
        """Images per forward for latents of h x w: as many as the device's free memory holds
        (ComfyUI's estimate per image), on the CPU bounded by `batch_pixels`."""
        dev = devices.resolve(self.device)
        if dev.managed:
            return max(1, int(dev.free_memory() // max(1, self.memory_used_decode(h, w))))
        return max(1, self.batch_pixels // max(1, h * w * 64))

    def memory_used_decode(self, h, w) -> float:
        """Working memory to decode one h x w latent (ComfyUI's figure for KL VAEs)."""
        return 2178 * h * w * 64 * devices.dtype_size(self.vae_dtype)

    def memory_used_encode(self, h, w) -> float:
        """Working memory to encode one h x w image."""
        return 1767 * h * w * devices.dtype_size(self.vae_dtype)

    def _finite_or_upcast(self, out, run, original):
        """fp16 VAEs overflow on some latents: redo this chunk (and keep working) in bf16 or
        fp32, which the per-layer casts of models/ops.py allow without touching the weights."""
        if self.vae_dtype != torch.float16 or torch.isfinite(out).all():
            return out
        self.vae_dtype = devices.vae_upcast_dtype(devices.resolve(self.device))
        log.warning("VAE produced NaN/inf in fp16: upcasting the VAE to %s", self.vae_dtype)
        return run(original.to(self.device, self.vae_dtype))  # from the fp32 input, not the fp16 copy

    def crop_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Centre-crop H and W down to multiples of 8 and keep the colour channels."""
        r = self.downscale_ratio
        for d in (1, 2):
            size = pixels.shape[d]
            keep = (size // r) * r
            if keep != size:
                pixels = pixels.narrow(d, (size % r) // 2, keep)
        return pixels[..., :self.output_channels]

    @torch.inference_mode()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """LATENT samples [B,4,h,w] (raw VAE space) -> IMAGE [B,8h,8w,3]. Out of memory ->
        decoded again in tiles, as ComfyUI does."""
        if not hasattr(self.first_stage_model, "decoder"):
            raise ValueError("this VAE has no decoder")
        if latent.ndim == 5:
            latent = latent[:, :, 0]
        try:
            return self._decode(latent)
        except torch.OutOfMemoryError:
            pass  # the tiles run once the exception and the tensors its frames hold are gone
        log.warning("Ran out of memory when regular VAE decoding, retrying with tiled VAE decoding.")
        memory.soft_empty_cache()
        return self.decode_tiled(latent)

    def _decode(self, latent):
        memory.load_models([self], self.memory_used_decode(*latent.shape[2:]))
        out = []
        step = self._per_chunk(*latent.shape[2:])
        run = compiled.vae_decoder(self.first_stage_model)  # its own decode unless --compile
        for i in range(0, latent.shape[0], step):
            part = latent[i:i + step]
            x = self._finite_or_upcast(run(part.to(self.device, self.vae_dtype)), run, part)
            out.append(self.process_output(x.to(self.output_device).float()))
        return torch.cat(out).movedim(1, -1)

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """IMAGE [B,H,W,C] in 0..1 -> LATENT samples [B,4,H/8,W/8] (posterior mode, raw VAE
        space). Out of memory -> encoded again in tiles."""
        if not hasattr(self.first_stage_model, "encoder"):
            raise ValueError("this VAE file has no encoder, it can only decode")
        try:
            return self._encode(pixels)
        except torch.OutOfMemoryError:
            pass
        log.warning("Ran out of memory when regular VAE encoding, retrying with tiled VAE encoding.")
        memory.soft_empty_cache()
        return self.encode_tiled(pixels)

    def _encode(self, pixels):
        pixels = self.crop_pixels(pixels).movedim(-1, 1)
        memory.load_models([self], self.memory_used_encode(*pixels.shape[2:]))
        out = []
        step = self._per_chunk(pixels.shape[2] // 8, pixels.shape[3] // 8)
        run = self.first_stage_model.encode
        for i in range(0, pixels.shape[0], step):
            x = self.process_input(pixels[i:i + step])
            out.append(self._finite_or_upcast(run(x.to(self.device, self.vae_dtype)), run, x).to(self.output_device).float())
        return torch.cat(out)


    # -- tiled (VAEDecodeTiled / VAEEncodeTiled): three tilings averaged, as ComfyUI ----------
    @torch.inference_mode()
    def decode_tiled(self, latent: torch.Tensor, tile_x: int = 64, tile_y: int = 64, overlap: int = 16) -> torch.Tensor:
        """Tile sizes and overlap in latent pixels; returns IMAGE [B,H,W,3]."""
        from models.progress import ProgressBar
        from models.tiling import tile_count, tiled_scale
        if latent.ndim == 5:
            latent = latent[:, :, 0]
        h, w = latent.shape[2:]
        memory.load_models([self], self.memory_used_decode(tile_y, tile_x) * 2)
        shapes = [(tile_x // 2, tile_y * 2), (tile_x * 2, tile_y // 2), (tile_x, tile_y)]
        pbar = ProgressBar(sum(latent.shape[0] * tile_count(w, h, tx, ty, overlap) for tx, ty in shapes))

        def run(z):
            return self.first_stage_model.decode(z.to(self.device, self.vae_dtype)).float()
        total = sum(tiled_scale(latent, run, tx, ty, overlap, self.upscale_ratio, self.output_channels,
                                self.output_device, pbar) for tx, ty in shapes)
        return self.process_output(total / 3.0).movedim(1, -1)

    @torch.inference_mode()
    def encode_tiled(self, pixels: torch.Tensor, tile_x: int = 512, tile_y: int = 512, overlap: int = 64) -> torch.Tensor:
        """Tile sizes and overlap in image pixels; returns LATENT samples."""
        from models.progress import ProgressBar
        from models.tiling import tile_count, tiled_scale
        if not hasattr(self.first_stage_model, "encoder"):
            raise ValueError("this VAE file has no encoder, it can only decode")
        pixels = self.crop_pixels(pixels).movedim(-1, 1)
        h, w = pixels.shape[2:]
        memory.load_models([self], self.memory_used_encode(tile_y, tile_x) * 2)
        shapes = [(tile_x, tile_y), (tile_x * 2, tile_y // 2), (tile_x // 2, tile_y * 2)]
        pbar = ProgressBar(sum(pixels.shape[0] * tile_count(w, h, tx, ty, overlap) for tx, ty in shapes))

        def run(x):
            return self.first_stage_model.encode(self.process_input(x).to(self.device, self.vae_dtype)).float()
        samples = None
        for tx, ty in shapes:
            part = tiled_scale(pixels, run, tx, ty, overlap, 1 / self.downscale_ratio, self.latent_channels,
                               self.output_device, pbar)
            samples = part if samples is None else samples + part
        return samples / 3.0


class PixelSpaceVAE(VAE):
    """The "pixel_space" choice of VAELoader: the latent is the image itself (3 channels,
    no downscaling), with the same -1..1 mapping as a real VAE."""

    downscale_ratio = 1
    upscale_ratio = 1

    def __init__(self):
        self.first_stage_model = None
        self.device = self.output_device = torch.device("cpu")
        self.vae_dtype = torch.float32
        self.batch_pixels = 1 << 22
        self.latent_channels = self.output_channels = 3

    @torch.inference_mode()
    def decode(self, latent):
        return self.process_output(latent.float()).movedim(1, -1)

    @torch.inference_mode()
    def encode(self, pixels):
        return self.process_input(self.crop_pixels(pixels).movedim(-1, 1).float())

    def decode_tiled(self, latent, *args, **kwargs):
        return self.decode(latent)

    def encode_tiled(self, pixels, *args, **kwargs):
        return self.encode(pixels)


def build_vae(source, prefix: str = "", device="cpu", weight_dtype=None, dtype=torch.float32) -> VAE:
    """A VAE from a checkpoint (prefix "first_stage_model.") or a bare VAE file (prefix "")."""
    from models.ops import load_into
    src = as_source(source)
    config = vae_config_from_state_dict(src, prefix)
    with torch.device("meta"):
        model = AutoencoderKL(config, with_encoder=prefix + "encoder.conv_in.weight" in src)
    parts = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")  # not loss.*, model_ema.*
    keys = [k for k in src.keys() if k.startswith(prefix) and k[len(prefix):].startswith(parts)]
    load_into(model, src.read(keys, strip=prefix, dtype=weight_dtype or dtype, device=device), what="VAE")
    return VAE(model, device, dtype)
