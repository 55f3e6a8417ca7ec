"""VAE nodes and the diffusion-model loader over HTTP, with tiny files in the real layouts:
listing, encode/decode workflows, inpaint encoding, and clear errors for wrong files."""
import os

import pytest
import torch
from safetensors.torch import save_file

from tests.tiny_checkpoints import LAYOUT_DIR, tiny_checkpoint
from wsclient import run_prompt

pytestmark = pytest.mark.skipif(not os.path.isdir(LAYOUT_DIR), reason="oracle layouts not available")


def _part(sd, prefix):
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


@pytest.fixture
def model_files(base_dir):
    sd = tiny_checkpoint("sd1", seed=7)
    (base_dir / "models" / "vae").mkdir(parents=True)
    (base_dir / "models" / "diffusion_models").mkdir(parents=True)
    save_file(_part(sd, "first_stage_model."), str(base_dir / "models" / "vae" / "tiny_vae.safetensors"))
    save_file(_part(sd, "model.diffusion_model."), str(base_dir / "models" / "diffusion_models" / "tiny_unet.safetensors"))
    lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(4, 2),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 4)}
    save_file(lora, str(base_dir / "models" / "vae" / "a_lora.safetensors"))
    save_file(lora, str(base_dir / "models" / "diffusion_models" / "a_lora.safetensors"))
    data = open(base_dir / "models" / "vae" / "tiny_vae.safetensors", "rb").read()
    (base_dir / "models" / "vae" / "cut.safetensors").write_bytes(data[: len(data) // 3])
    return base_dir


def _roundtrip(vae_name, w=64, h=48):
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": w, "height": h, "batch_size": 2, "color": 0x336699}},
            "2": {"class_type": "VAELoader", "inputs": {"vae_name": vae_name}},
            "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["2", 0]}},
            "4": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["2", 0]}},
            "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "vae"}}}


def _error(events):
    return next(d for t, d in events if t == "execution_error")


async def test_object_info_lists_vae_files_and_pixel_space(client, model_files):
    info = await (await client.get("/object_info/VAELoader")).json()
    names = info["VAELoader"]["input"]["required"]["vae_name"][0]
    assert names == ["a_lora.safetensors", "cut.safetensors", "tiny_vae.safetensors", "pixel_space"]
    assert info["VAELoader"]["display_name"] == "Load VAE"
    unet = await (await client.get("/object_info/UNETLoader")).json()
    assert "tiny_unet.safetensors" in unet["UNETLoader"]["input"]["required"]["unet_name"][0]
    assert unet["UNETLoader"]["input"]["required"]["weight_dtype"][0][:2] == ["default", "fp8_e4m3fn"]


async def test_encode_decode_workflow(client, model_files):
    _, events, hist = await run_prompt(client, _roundtrip("tiny_vae.safetensors"))
    assert hist["status"]["status_str"] == "success", events
    images = hist["outputs"]["5"]["images"]
    assert len(images) == 2
    from PIL import Image
    img = Image.open(model_files / "output" / images[0]["filename"])
    assert img.size == (64, 48)


async def test_pixel_space_vae_round_trips_exactly(client, model_files):
    _, events, hist = await run_prompt(client, _roundtrip("pixel_space", 20, 12))
    assert hist["status"]["status_str"] == "success", events
    from PIL import Image
    img = Image.open(model_files / "output" / hist["outputs"]["5"]["images"][0]["filename"])
    assert img.size == (20, 12)
    # 2x-1 then (x+1)/2 is exact up to float rounding; SaveImage truncates to 8 bits
    assert all(abs(a - b) <= 1 for a, b in zip(img.getpixel((3, 3)), (0x33, 0x66, 0x99)))


@pytest.mark.parametrize("name, message", [("a_lora.safetensors", "looks like a LoRA"),
                                           ("cut.safetensors", "truncated")])
async def test_wrong_or_broken_vae_file_is_an_execution_error(client, model_files, name, message):
    _, events, hist = await run_prompt(client, _roundtrip(name))
    err = _error(events)
    assert err["node_type"] == "VAELoader" and message in err["exception_message"]
    assert hist["status"]["status_str"] == "error"
    _, _, again = await run_prompt(client, _roundtrip("tiny_vae.safetensors"))  # the server keeps serving
    assert again["status"]["status_str"] == "success"


def test_unet_loader_rejects_a_lora(model_files):
    from models import folders
    from models.detect import UnknownArchitectureError
    from nodes.model_loaders import UNETLoader
    folders.configure(base=str(model_files))
    with pytest.raises(UnknownArchitectureError, match="looks like a LoRA"):
        UNETLoader().load_unet("a_lora.safetensors", "default")


def test_unet_loader_detects_the_family(model_files):
    from models import folders
    from nodes.model_loaders import UNETLoader
    folders.configure(base=str(model_files))
    for dtype in ("default", "fp8_e4m3fn"):
        (patcher,) = UNETLoader().load_unet("tiny_unet.safetensors", dtype)
        model = patcher.model
        assert model.detection.family == "sd1" and model.detection.unet_prefix == ""
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            out = model.apply_model(x, torch.tensor([1.0]), c_crossattn=torch.randn(1, 77, 48))
        assert out.shape == x.shape and torch.isfinite(out).all()


def test_vae_encode_for_inpaint_greys_the_masked_pixels():
    from models.vae import PixelSpaceVAE
    from nodes.vae import VAEEncodeForInpaint
    vae = PixelSpaceVAE()
    vae.downscale_ratio = 8  # crop like an 8x VAE, keep pixels readable in the "latent"
    pixels = torch.rand(1, 21, 19, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 21, 19)
    mask[:, 4:10, 6:12] = 1.0
    (out,) = VAEEncodeForInpaint().encode(vae, pixels, mask, grow_mask_by=6)
    latent, noise_mask = out["samples"], out["noise_mask"]
    assert latent.shape == (1, 3, 16, 16) and noise_mask.shape == (1, 1, 16, 16)
    # centre crop offsets (21 % 8) // 2 = 2 and (19 % 8) // 2 = 1
    assert torch.equal(latent[0, :, 0, 0], pixels[0, 2, 1] * 2 - 1)
    assert torch.all(latent[0, :, 4:8, 7:11] == 0)  # mid-grey inside the mask
    assert noise_mask.sum() > mask[:, 2:18, 1:17].sum()  # grown by the 6x6 kernel


def test_vae_decode_tiled_node_uses_pixel_sizes(tmp_path):
    from models.checkpoint import load_vae
    from nodes.vae import VAEDecodeTiled
    sd = tiny_checkpoint("sd1", seed=7)
    vae = load_vae(_part(sd, "first_stage_model."))
    latent = {"samples": torch.randn(1, 4, 10, 12, generator=torch.Generator().manual_seed(0))}
    (img,) = VAEDecodeTiled().decode(vae, latent, tile_size=64, overlap=64)  # overlap capped at tile/4
    assert img.shape == (1, 80, 96, 3)
    (whole,) = VAEDecodeTiled().decode(vae, latent, tile_size=512, overlap=64)
    assert torch.allclose(whole, vae.decode(latent["samples"]), atol=1e-6)
