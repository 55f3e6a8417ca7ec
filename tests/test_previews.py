"""Latent previews: latent2rgb by default when asked, TAESD when its decoder file exists."""
import torch
from safetensors.torch import save_file

from models import folders
from models.latent_formats import SD15, SDXL
from models.sampling import preview
from models.taesd import TAESDDecoder


def teardown_function():
    preview.configure("none")
    preview.set_prompt_override(None)


def test_no_previewer_when_disabled():
    preview.configure("none")
    assert preview.get_previewer(SD15()) is None


def test_latent2rgb_maps_channels_with_family_factors():
    preview.configure("auto", 256)
    p = preview.get_previewer(SDXL())
    x0 = torch.zeros(1, 4, 8, 8)
    x0[0, 0] = 1.0  # only the first channel on: RGB = factors[0] + bias
    img = p.decode(x0)
    assert img.size == (8, 8)
    expected = [round(((f + b + 1) / 2) * 255 - 0.5) for f, b in zip(SDXL.latent_rgb_factors[0], SDXL.latent_rgb_factors_bias)]
    got = img.getpixel((3, 3))
    assert all(abs(g - e) <= 1 for g, e in zip(got, expected))
    fmt, image, size = preview.preview_payload(p, x0)
    assert fmt == "JPEG" and size == 256


def test_prompt_override_beats_server_default():
    preview.configure("none")
    preview.set_prompt_override("latent2rgb")
    assert preview.get_previewer(SD15()) is not None
    preview.set_prompt_override("default")
    assert preview.get_previewer(SD15()) is None


def test_taesd_used_when_decoder_file_present(tmp_path):
    folders.configure(base=str(tmp_path))
    approx = tmp_path / "models" / "vae_approx"
    approx.mkdir(parents=True)
    torch.manual_seed(0)
    sd = {k: v.contiguous() for k, v in TAESDDecoder().net.state_dict().items()}
    save_file(sd, str(approx / "taesd_decoder.safetensors"))
    preview.configure("taesd")
    p = preview.get_previewer(SD15())
    assert isinstance(p, preview.TAESDPreview)
    assert p.decode(torch.randn(1, 4, 4, 4)).size == (32, 32)
    folders.configure()
