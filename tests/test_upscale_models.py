"""Upscale models through spandrel: tiny random ESRGAN (Real-ESRGAN RRDBNet), Real-ESRGAN
Compact and SwinIR files in their real key layouts; detection, forward against independent
references, tiling, out-of-memory back-off, clamping, and the nodes over HTTP."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wsclient import run_prompt

from models.upscale import UpscaleModelError, load_upscale_model_from_state_dict, spandrel_module, upscale_image

try:
    spandrel_module()  # imports spandrel, with a torchvision stand-in when there is none
except UpscaleModelError as e:
    pytest.skip(f"spandrel is not installed: {e}", allow_module_level=True)


def _conv(sd, name, cout, cin, g, k=3, std=0.1):
    sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * std
    sd[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.01


def esrgan_x4_sd(nf=8, blocks=1, grow=32, seed=0):
    """Real-ESRGAN's RRDBNet key layout (RealESRGAN_x4plus.pth, inside 'params_ema')."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    _conv(sd, "conv_first", nf, 3, g)
    for b in range(blocks):
        for r in (1, 2, 3):
            for c in range(1, 6):
                _conv(sd, f"body.{b}.rdb{r}.conv{c}", nf if c == 5 else grow, nf + (c - 1) * grow, g)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        _conv(sd, name, nf, nf, g)
    _conv(sd, "conv_last", 3, nf, g)
    return sd


def esrgan_reference(sd, x, blocks=1):
    def conv(name, h):
        return F.conv2d(h, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1)

    def lrelu(h):
        return F.leaky_relu(h, 0.2)

    def rdb(prefix, h):
        feats = [h]
        for c in range(1, 5):
            feats.append(lrelu(conv(f"{prefix}.conv{c}", torch.cat(feats, 1))))
        return conv(f"{prefix}.conv5", torch.cat(feats, 1)) * 0.2 + h

    feat = conv("conv_first", x)
    body = feat
    for b in range(blocks):
        inner = body
        for r in (1, 2, 3):
            inner = rdb(f"body.{b}.rdb{r}", inner)
        body = inner * 0.2 + body
    feat = feat + conv("conv_body", body)
    feat = lrelu(conv("conv_up1", F.interpolate(feat, scale_factor=2, mode="nearest")))
    feat = lrelu(conv("conv_up2", F.interpolate(feat, scale_factor=2, mode="nearest")))
    return conv("conv_last", lrelu(conv("conv_hr", feat)))


def compact_sd(nf=8, convs=1, scale=2, seed=0):
    """SRVGGNetCompact (realesr-general-x4v3 / RealESRGAN_x4plus_anime_6B-compact layout):
    body = conv, PReLU, (conv, PReLU) * convs, conv to 3*scale^2 channels."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    _conv(sd, "body.0", nf, 3, g, std=0.2)
    sd["body.1.weight"] = torch.full((nf,), 0.25)
    for i in range(convs):
        _conv(sd, f"body.{2 + 2 * i}", nf, nf, g, std=0.2)
        sd[f"body.{3 + 2 * i}.weight"] = torch.full((nf,), 0.25)
    _conv(sd, f"body.{2 + 2 * convs}", 3 * scale * scale, nf, g, std=0.2)
    return sd


def compact_reference(sd, x, convs=1, scale=2):
    h = x
    for i in range(convs + 1):
        h = F.conv2d(h, sd[f"body.{2 * i}.weight"], sd[f"body.{2 * i}.bias"], padding=1)
        h = F.prelu(h, sd[f"body.{2 * i + 1}.weight"])
    last = 2 + 2 * convs
    h = F.pixel_shuffle(F.conv2d(h, sd[f"body.{last}.weight"], sd[f"body.{last}.bias"], padding=1), scale)
    return h + F.interpolate(x, scale_factor=scale, mode="nearest")


def swinir_sd(seed=0):
    """A small classical-SR SwinIR (pixelshuffledirect) saved from DataParallel ('module.' keys)."""
    from spandrel.architectures.SwinIR import SwinIR
    torch.manual_seed(seed)
    net = SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, mlp_ratio=2.0,
                 upscale=2, upsampler="pixelshuffledirect")
    return {"module." + k: v.clone() for k, v in net.state_dict().items()}


@pytest.fixture
def upscale_files(base_dir):
    folder = base_dir / "models" / "upscale_models"
    folder.mkdir(parents=True)
    torch.save({"params_ema": esrgan_x4_sd()}, folder / "RealESRGAN_x4plus.pth")
    torch.save(compact_sd(), folder / "compact_x2.pth")
    torch.save({"encoder.weight": torch.zeros(2, 2), "decoder.bias": torch.zeros(2)}, folder / "not_an_upscaler.pth")
    (base_dir / "input").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(base_dir / "input" / "small.png")
    return base_dir


def _image(h, w, seed=0):
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


def test_esrgan_detected_and_matches_reference():
    sd = esrgan_x4_sd()
    model = load_upscale_model_from_state_dict(sd)
    assert model.architecture.id == "ESRGAN" and model.scale == 4
    img = _image(12, 10)
    out = upscale_image(model, img, device="cpu")
    ref = esrgan_reference(sd, img.movedim(-1, 1)).clamp(0, 1).movedim(1, -1)
    assert out.shape == (1, 48, 40, 3)
    assert torch.allclose(out, ref, atol=1e-5)


def test_compact_detected_and_matches_reference():
    sd = compact_sd()
    model = load_upscale_model_from_state_dict(sd)
    assert model.architecture.id == "RealESRGAN Compact" or "Compact" in model.architecture.id
    assert model.scale == 2
    img = _image(9, 13)
    out = upscale_image(model, img, device="cpu")
    ref = compact_reference(sd, img.movedim(-1, 1)).clamp(0, 1).movedim(1, -1)
    assert torch.allclose(out, ref, atol=1e-5)


def test_swinir_with_dataparallel_prefix_loads_and_keeps_its_scale():
    model = load_upscale_model_from_state_dict(swinir_sd())
    assert model.architecture.id == "SwinIR" and model.scale == 2
    out = upscale_image(model, _image(10, 14), device="cpu")  # not a multiple of the window: spandrel pads
    assert out.shape == (1, 20, 28, 3) and out.min() >= 0 and out.max() <= 1


def test_output_is_clamped_to_unit_range():
    sd = compact_sd(seed=3)
    sd["body.4.bias"] += 5.0  # push the residual far above 1
    model = load_upscale_model_from_state_dict(sd)
    raw = compact_reference(sd, _image(8, 8).movedim(-1, 1))
    assert raw.max() > 1.5
    out = upscale_image(model, _image(8, 8), device="cpu")
    assert out.max() == 1.0 and out.min() >= 0.0


def _pointwise(sd):
    """Zero every 3x3 tap but the centre: the network sees one pixel (receptive field 1)."""
    for k, v in sd.items():
        if v.ndim == 4:
            centre = v[:, :, 1, 1].clone()
            v.zero_()
            v[:, :, 1, 1] = centre
    return sd


def test_tiled_equals_untiled():
    img = _image(70, 90, seed=2)
    # receptive field of one pixel: the blended tiles must give exactly the untiled result
    model = load_upscale_model_from_state_dict(_pointwise(compact_sd(seed=1)))
    whole = upscale_image(model, img, tile=512, device="cpu")
    tiled = upscale_image(model, img, tile=32, overlap=8, min_tile=8, device="cpu")
    assert tiled.shape == whole.shape == (1, 140, 180, 3)
    assert torch.allclose(tiled, whole, atol=1e-5)
    # random 3x3 weights: pixels near tile seams see the tile's zero padding and differ a little;
    # everywhere else (most of the image) the result is the untiled one
    model = load_upscale_model_from_state_dict(compact_sd(seed=1))
    whole = upscale_image(model, img, tile=512, device="cpu")
    tiled = upscale_image(model, img, tile=32, overlap=8, min_tile=8, device="cpu")
    diff = (tiled - whole).abs()
    assert diff.median() < 1e-6 and diff.mean() < 0.02


class _FlakyModel:
    """Raises CUDA-style OOM for tiles larger than `limit` pixels on a side."""
    scale, output_channels = 1, 3

    def __init__(self, limit):
        self.limit, self.sizes = limit, []

    def to(self, device):
        return self

    def __call__(self, x):
        self.sizes.append(max(x.shape[-2:]))
        if max(x.shape[-2:]) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return x * 2


def test_out_of_memory_halves_the_tile_down_to_128():
    model = _FlakyModel(limit=200)
    img = _image(300, 300)
    out = upscale_image(model, img, device="cpu")
    assert max(model.sizes) == 300 and 128 in model.sizes  # 512 (whole image) -> 256 -> 128
    assert torch.allclose(out, (img * 2).clamp(0, 1), atol=1e-6)
    with pytest.raises(torch.OutOfMemoryError):
        upscale_image(_FlakyModel(limit=100), img, device="cpu")  # 128 fails too: no 64 px try


def test_non_upscaler_and_inpainting_model_are_refused():
    with pytest.raises(UpscaleModelError, match="not an upscale model"):
        load_upscale_model_from_state_dict({"foo.weight": torch.zeros(3, 3)}, "foo.pth")


async def test_object_info_and_upscale_over_http(upscale_files, client):  # files first: listings are cached 1 s
    info = (await (await client.get("/object_info/UpscaleModelLoader")).json())["UpscaleModelLoader"]
    assert info["input"]["required"]["model_name"][1]["options"] == [
        "RealESRGAN_x4plus.pth", "compact_x2.pth", "not_an_upscaler.pth"]
    assert info["python_module"] == "comfy_extras.nodes_upscale_model" and info["output"] == ["UPSCALE_MODEL"]
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "small.png"}},
              "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "RealESRGAN_x4plus.pth"}},
              "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
              "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "up"}}}
    _, events, hist = await run_prompt(client, prompt)
    assert hist["status"]["status_str"] == "success", events
    saved = hist["outputs"]["4"]["images"][0]
    got = np.asarray(Image.open(upscale_files / "output" / saved["filename"]), dtype=np.int32)
    assert got.shape == (80, 96, 3)
    src = torch.from_numpy(np.asarray(Image.open(upscale_files / "input" / "small.png"), dtype=np.float32) / 255)
    ref = esrgan_reference(esrgan_x4_sd(), src[None].movedim(-1, 1)).clamp(0, 1)[0].movedim(0, -1)
    expected = np.clip(ref.numpy() * 255.0, 0, 255).astype(np.int32)
    assert np.abs(got - expected).max() <= 1


async def test_non_upscaler_file_is_an_execution_error(upscale_files, client):
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "small.png"}},
              "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "not_an_upscaler.pth"}},
              "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
              "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}
    _, events, hist = await run_prompt(client, prompt)
    err = next(d for t, d in events if t == "execution_error")
    assert err["node_type"] == "UpscaleModelLoader"
    assert "not_an_upscaler.pth is not an upscale model" in err["exception_message"]
    assert hist["status"]["status_str"] == "error"


def test_torchvision_stand_in_does_not_outlive_spandrel_import():
    import importlib.util
    import sys
    from models import upscale
    spandrel_module()
    stand_in = sys.modules.get("torchvision")
    assert stand_in is None or getattr(stand_in, "transforms", None) is None or \
        stand_in.transforms.functional.normalize is not upscale._tv_normalize
    if importlib.util.find_spec("torchvision") is None:
        with pytest.raises(ImportError):
            import torchvision  # noqa: F401
    x = torch.rand(2, 3, 4, 5)
    want = (x - torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1)) / torch.tensor([0.5, 0.2, 0.1]).view(3, 1, 1)
    assert torch.allclose(upscale._tv_normalize(x, [0.5, 0.4, 0.3], [0.5, 0.2, 0.1]), want)


async def test_packs_reach_the_nodes_through_comfy_extras(upscale_files, client):
    # Ultimate SD Upscale and others: from comfy_extras.nodes_upscale_model import ImageUpscaleWithModel
    from comfy_extras.nodes_upscale_model import ImageUpscaleWithModel, UpscaleModelLoader
    model = UpscaleModelLoader().load_model("compact_x2.pth")[0]
    img = _image(6, 5)
    out = ImageUpscaleWithModel().upscale(upscale_model=model, image=img)[0]
    ref = compact_reference(compact_sd(), img.movedim(-1, 1)).clamp(0, 1).movedim(1, -1)
    assert torch.allclose(out, ref, atol=1e-5)
