"""ControlNet preprocessors (the comfyui_controlnet_aux nodes built in, and ComfyUI's kornia
Canny / Morphology): a tiny random ControlNetHED.pth in the real key layout checked against an
independent forward, weight lookup and the missing-file error over HTTP, and the threshold
detectors on synthetic images whose edges are known."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wsclient import run_prompt

pytest.importorskip("cv2", reason="opencv-python-headless is a dependency")

TINY_WIDTHS, DEPTHS = (4, 8, 8, 16, 16), (2, 2, 3, 3, 3)


def tiny_hed_sd(seed=0):
    """ControlNetHED.pth's key layout (norm, blockN.convs.i, blockN.projection) at tiny widths."""
    g = torch.Generator().manual_seed(seed)
    sd = {"norm": torch.rand(1, 3, 1, 1, generator=g) * 128}
    previous = 3
    for i, (width, depth) in enumerate(zip(TINY_WIDTHS, DEPTHS), start=1):
        for j in range(depth):
            fan_in = (previous if j == 0 else width) * 9
            sd[f"block{i}.convs.{j}.weight"] = torch.randn(width, previous if j == 0 else width, 3, 3,
                                                           generator=g) / fan_in ** 0.5
            sd[f"block{i}.convs.{j}.bias"] = torch.randn(width, generator=g) * 0.1
        sd[f"block{i}.projection.weight"] = torch.randn(1, width, 1, 1, generator=g) * 0.3
        sd[f"block{i}.projection.bias"] = torch.randn(1, generator=g) * 0.1
        previous = width
    return sd


def hed_reference(sd, pixels: np.ndarray) -> np.ndarray:
    """Edge probability straight from the description: 0..255 RGB minus norm, VGG blocks, 1x1
    side projections, bilinear resize to the input, mean, sigmoid."""
    h = torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1)[None].double() - sd["norm"].double()
    sides = []
    for i in range(1, 6):
        if i > 1:
            h = F.max_pool2d(h, 2)
        j = 0
        while f"block{i}.convs.{j}.weight" in sd:
            h = F.relu(F.conv2d(h, sd[f"block{i}.convs.{j}.weight"].double(), sd[f"block{i}.convs.{j}.bias"].double(),
                                padding=1))
            j += 1
        side = F.conv2d(h, sd[f"block{i}.projection.weight"].double(), sd[f"block{i}.projection.bias"].double())
        sides.append(F.interpolate(side, size=pixels.shape[:2], mode="bilinear", align_corners=False))
    return torch.sigmoid(torch.stack(sides).mean(0))[0, 0].numpy()


def _synthetic(h=64, w=64, seed=0):
    """A light image with a dark filled rectangle and a dark diagonal stroke."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 230, np.uint8) + rng.integers(0, 20, (h, w, 3), dtype=np.uint8)
    img[h // 4: h // 2, w // 5: w // 2] = (20, 30, 40)
    for t in range(min(h, w)):
        img[t, max(0, t - 1): t + 2] = (10, 200, 10)  # dark only in red and blue: min channel < 127
    return img


@pytest.fixture
def pictures(base_dir):
    Image.fromarray(_synthetic()).save(base_dir / "input" / "square.png")
    Image.fromarray(_synthetic(100, 150)).save(base_dir / "input" / "wide.png")
    step = np.zeros((64, 64, 3), np.uint8)
    step[:, 32:] = 255
    Image.fromarray(step).save(base_dir / "input" / "step.png")
    return base_dir


def _place_hed(base_dir, nested=True):
    folder = base_dir / "models" / "annotators"
    if nested:
        folder = folder / "lllyasviel" / "Annotators"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_hed_sd(), folder / "ControlNetHED.pth")


async def _run_one(client, base_dir, node, inputs, image="square.png"):
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": image}},
              "2": {"class_type": node, "inputs": {"image": ["1", 0], **inputs}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": node}}}
    _, events, hist = await run_prompt(client, prompt)
    assert hist["status"]["status_str"] == "success", events
    saved = hist["outputs"]["3"]["images"][0]
    return np.asarray(Image.open(base_dir / "output" / saved["filename"]).convert("RGB"), dtype=np.int32)


def test_hed_network_matches_the_independent_forward():
    from models.hed import build_hed, hed_edges
    sd = tiny_hed_sd()
    model = build_hed(sd)
    assert [getattr(model, f"block{i}").projection.in_channels for i in range(1, 6)] == list(TINY_WIDTHS)
    pixels = _synthetic()
    got = hed_edges(model, pixels)
    want = hed_reference(sd, pixels)
    assert got.shape == (64, 64) and np.abs(got - want).max() < 1e-5
    assert got.std() > 1e-3  # the map is not flat


def test_hed_rejects_files_of_another_layout():
    from models.hed import build_hed
    from models.state_dict import ModelFileError
    with pytest.raises(ModelFileError, match="not a ControlNetHED checkpoint"):
        build_hed({"conv_first.weight": torch.zeros(1)}, "x.pth")
    sd = tiny_hed_sd()
    del sd["block5.projection.bias"]
    with pytest.raises(ModelFileError, match="does not match"):
        build_hed(sd, "x.pth")


@pytest.mark.parametrize("nested", [True, False])
async def test_hed_node_over_http(pictures, client, nested):
    _place_hed(pictures, nested)
    # resolution 64 on a 64x64 picture: no resize and no padding, so the map is the network's
    pixels = np.asarray(Image.open(pictures / "input" / "square.png").convert("RGB"))
    edge = hed_reference(tiny_hed_sd(), pixels)
    soft = await _run_one(client, pictures, "HEDPreprocessor", {"safe": "disable", "resolution": 64})
    assert soft.shape == (64, 64, 3) and (soft[..., 0] == soft[..., 2]).all()
    assert np.abs(soft[..., 0] - np.clip(edge * 255, 0, 255).astype(np.int32)).max() <= 1
    safe = await _run_one(client, pictures, "HEDPreprocessor", {"safe": "enable", "resolution": 64})
    want = np.clip(np.floor(edge * 3) / 2 * 255, 0, 255).astype(np.int32)
    assert set(np.unique(safe)) <= {0, 127, 255}
    assert (safe[..., 0] != want).mean() < 0.01  # only pixels sitting on a quantisation step may differ


async def test_hed_missing_weights_is_a_clear_error(pictures, client):
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "square.png"}},
              "2": {"class_type": "HEDPreprocessor", "inputs": {"image": ["1", 0], "safe": "enable"}},
              "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}
    _, events, hist = await run_prompt(client, prompt)
    err = next(d for t, d in events if t == "execution_error")
    assert err["node_type"] == "HEDPreprocessor"
    assert "ControlNetHED.pth" in err["exception_message"]
    assert str(pictures / "models" / "annotators") in err["exception_message"]
    _place_hed(pictures)  # the file arrives: the same prompt now runs
    _, events, hist = await run_prompt(client, prompt)
    assert hist["status"]["status_str"] == "success", events


async def test_fake_scribble_is_binary_strokes(pictures, client):
    _place_hed(pictures)
    out = await _run_one(client, pictures, "FakeScribblePreprocessor", {"safe": "enable", "resolution": 128})
    assert out.shape == (128, 128, 3) and set(np.unique(out)) <= {0, 255}


async def test_scribble_thresholds_dark_pixels(pictures, client):
    out = await _run_one(client, pictures, "ScribblePreprocessor", {"resolution": 64})
    pixels = np.asarray(Image.open(pictures / "input" / "square.png").convert("RGB"))
    want = np.where(pixels.min(axis=2) < 127, 0, 255)
    assert out.shape == (64, 64, 3) and (out[..., 0] == want).all() and (out[..., 1] == want).all()
    assert (want == 0).sum() > 400  # the rectangle and the stroke are there


async def test_resolution_sets_the_short_side_and_padding_is_cropped(pictures, client):
    # 100x150 -> short side 512 -> 512x768; 192 -> 192x288 (288 is padded to 320 for the detector)
    assert (await _run_one(client, pictures, "ScribblePreprocessor", {}, "wide.png")).shape == (512, 768, 3)
    out = await _run_one(client, pictures, "CannyEdgePreprocessor", {"resolution": 192}, "wide.png")
    assert out.shape == (192, 288, 3)


def test_resolution_rules():
    from nodes.preprocessor_common import effective_resolution, resize_with_pad
    assert effective_resolution(0) == 512 and effective_resolution(63) == 512 and effective_resolution(64) == 64
    padded, crop = resize_with_pad(np.zeros((30, 50, 3), np.uint8), 100)
    assert padded.shape == (128, 192, 3) and crop(padded).shape == (100, 167, 3)
    rgba = np.zeros((8, 8, 4), np.uint8)  # transparent black composites to white
    padded, crop = resize_with_pad(rgba, 8)
    assert (crop(padded) == 255).all()


async def test_canny_edge_preprocessor_finds_the_step(pictures, client):
    out = await _run_one(client, pictures, "CannyEdgePreprocessor",
                         {"low_threshold": 100, "high_threshold": 200, "resolution": 64}, "step.png")
    columns = np.nonzero(out[..., 0].any(axis=0))[0]
    assert set(columns) <= {31, 32} and len(columns) >= 1
    assert (out[:, columns[0], 0] == 255).mean() > 0.9  # a full-height line


async def test_comfyui_canny_finds_the_step(pictures, client):
    out = await _run_one(client, pictures, "Canny", {"low_threshold": 0.4, "high_threshold": 0.8}, "step.png")
    assert out.shape == (64, 64, 3) and set(np.unique(out)) <= {0, 255}
    columns = set(np.nonzero(out[..., 0].any(axis=0))[0])
    assert columns and columns <= {31, 32}
    ramp = np.repeat(np.linspace(0, 40, 64, dtype=np.uint8)[None, :, None], 64, axis=0).repeat(3, axis=2)
    Image.fromarray(ramp).save(pictures / "input" / "ramp.png")
    blank = await _run_one(client, pictures, "Canny", {"low_threshold": 0.4, "high_threshold": 0.8}, "ramp.png")
    assert blank.max() == 0  # a gentle ramp stays under the thresholds


async def test_binary_and_lineart_and_xdog(pictures, client):
    pixels = np.asarray(Image.open(pictures / "input" / "square.png").convert("RGB")).astype(np.float32)
    grey = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
    binary = await _run_one(client, pictures, "BinaryPreprocessor", {"bin_threshold": 100, "resolution": 64})
    clear = (np.abs(grey - 100) > 2)  # away from the threshold OpenCV's fixed-point grey agrees
    assert ((binary[..., 0] == 255) == (grey > 100))[clear].all()
    lineart = await _run_one(client, pictures, "LineartStandardPreprocessor", {"resolution": 64})
    assert lineart.shape == (64, 64, 3) and lineart[16:32, 12:32].max() > 0  # the rectangle's inner rim
    xdog = await _run_one(client, pictures, "Scribble_XDoG_Preprocessor", {"threshold": 32, "resolution": 64})
    assert set(np.unique(xdog)) <= {0, 255} and xdog.max() == 255


async def test_morphology_dilates_and_erodes(pictures, client):
    dot = np.zeros((16, 16, 3), np.uint8)
    dot[8, 8] = 255
    Image.fromarray(dot).save(pictures / "input" / "dot.png")
    grown = await _run_one(client, pictures, "Morphology", {"operation": "dilate", "kernel_size": 3}, "dot.png")
    assert (grown[..., 0] == 255).sum() == 9 and (grown[7:10, 7:10, 0] == 255).all()
    gone = await _run_one(client, pictures, "Morphology", {"operation": "erode", "kernel_size": 3}, "dot.png")
    assert gone.max() == 0


async def test_object_info_entries(client):
    info = await (await client.get("/object_info")).json()
    hed = info["HEDPreprocessor"]
    assert hed["python_module"] == "custom_nodes.comfyui_controlnet_aux"
    assert hed["category"] == "ControlNet Preprocessors/Line Extractors"
    assert hed["display_name"] == "HED Soft-Edge Lines"
    assert hed["input"]["required"] == {"image": ["IMAGE"]}
    assert hed["input"]["optional"]["safe"] == [["enable", "disable"], {"default": "enable"}]
    assert hed["input"]["optional"]["resolution"] == ["INT", {"default": 512, "min": 64, "max": 16384, "step": 64}]
    assert list(info["ScribblePreprocessor"]["input"]["optional"]) == ["resolution"]
    assert info["Canny"]["python_module"] == "comfy_extras.nodes_canny"
    assert info["Morphology"]["display_name"] == "ImageMorphology"
    assert info["ImageUpscaleWithModel"]["category"] == "image/upscaling"
