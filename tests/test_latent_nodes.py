"""Latent nodes compute what ComfyUI's do."""
import torch

from models.resize import common_upscale
from nodes import latent as L


def lat(b=2, h=8, w=8, seed=0):
    return {"samples": torch.randn(b, 4, h, w, generator=torch.Generator().manual_seed(seed))}


def test_empty_latent_shape():
    (out,) = L.EmptyLatentImage().generate(512, 768, 3)
    assert out["samples"].shape == (3, 4, 96, 64) and not out["samples"].any()


def test_from_batch_records_batch_index_and_masks():
    src = lat(b=4)
    src["noise_mask"] = torch.rand(4, 1, 8, 8)
    (out,) = L.LatentFromBatch().frombatch(src, 1, 2)
    assert torch.equal(out["samples"], src["samples"][1:3])
    assert out["batch_index"] == [1, 2]
    assert torch.equal(out["noise_mask"], src["noise_mask"][1:3])
    (clamped,) = L.LatentFromBatch().frombatch(src, 10, 5)
    assert clamped["batch_index"] == [3] and clamped["samples"].shape[0] == 1


def test_repeat_extends_batch_index():
    (one,) = L.LatentFromBatch().frombatch(lat(b=4), 2, 1)
    (out,) = L.RepeatLatentBatch().repeat(one, 3)
    assert out["samples"].shape[0] == 3
    assert out["batch_index"] == [2, 3, 4]


def test_upscale_rules():
    src = lat(b=1, h=8, w=16)
    (same,) = L.LatentUpscale().upscale(src, "nearest-exact", 0, 0, "disabled")
    assert same is src
    (out,) = L.LatentUpscale().upscale(src, "bilinear", 0, 96, "disabled")  # keeps aspect, min 64
    assert out["samples"].shape[-2:] == (12, 24)
    (by,) = L.LatentUpscaleBy().upscale(src, "bislerp", 1.5)
    assert by["samples"].shape[-2:] == (12, 24)


def test_bislerp_preserves_direction_and_norm_interpolation():
    # two constant channel vectors of the same norm: bislerp keeps that norm everywhere
    a = torch.tensor([3.0, 4.0, 0.0, 0.0]).view(1, 4, 1, 1)
    b = torch.tensor([0.0, 0.0, 3.0, 4.0]).view(1, 4, 1, 1)
    x = torch.cat([a, b], dim=3).repeat(1, 1, 2, 1)  # [1,4,2,2]
    up = common_upscale(x, 5, 2, "bislerp", "disabled")
    norms = up.norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, 5.0))


def test_center_crop_upscale():
    x = torch.arange(16.0).view(1, 1, 2, 8)
    out = common_upscale(x, 2, 2, "nearest-exact", "center")
    # 8:2 aspect cropped to the middle 2x2 block
    assert torch.equal(out, x[:, :, :, 3:5])


def test_composite_with_and_without_feather():
    to, frm = lat(b=1, h=16, w=16, seed=1), {"samples": torch.ones(1, 4, 8, 8)}
    (out,) = L.LatentComposite().composite(to, frm, 32, 16, feather=0)
    assert torch.equal(out["samples"][:, :, 2:10, 4:12], torch.ones(1, 4, 8, 8))
    assert torch.equal(out["samples"][:, :, :2], to["samples"][:, :, :2])
    (soft,) = L.LatentComposite().composite(to, frm, 32, 16, feather=16)
    region = soft["samples"][:, :, 2:10, 4:12]
    inner = region[:, :, 2:-2, 2:-2]
    assert torch.equal(inner, torch.ones_like(inner))
    edge_weight = 0.5  # first feather row: ramp 1/2
    expected = frm["samples"][:, :, 0, 4] * edge_weight + to["samples"][:, :, 2, 8] * (1 - edge_weight)
    torch.testing.assert_close(region[:, :, 0, 4], expected)


def test_blend_rotate_flip_crop_mask():
    a, b = lat(b=1, seed=1), lat(b=1, seed=2)
    (bl,) = L.LatentBlend().blend(a, b, 0.25)
    torch.testing.assert_close(bl["samples"], a["samples"] * 0.25 + b["samples"] * 0.75)
    (r,) = L.LatentRotate().rotate(a, "90 degrees")
    assert torch.equal(r["samples"], torch.rot90(a["samples"], 1, [3, 2]))
    (f,) = L.LatentFlip().flip(a, "y-axis: horizontally")
    assert torch.equal(f["samples"], a["samples"].flip(3))
    big = lat(b=1, h=16, w=16)
    (c,) = L.LatentCrop().crop(big, 64, 64, 512, 0)  # x clamped so 8 latent pixels remain
    assert torch.equal(c["samples"], big["samples"][:, :, 0:8, 8:16])
    (m,) = L.SetLatentNoiseMask().set_mask(a, torch.ones(2, 64, 64))
    assert m["noise_mask"].shape == (2, 1, 64, 64)


async def test_latent_nodes_listed_in_object_info(client):
    info = await (await client.get("/object_info/EmptyLatentImage")).json()
    spec = info["EmptyLatentImage"]
    assert spec["display_name"] == "Empty Latent Image"
    assert spec["input"]["required"]["width"] == ["INT", {"default": 512, "min": 16, "max": 16384, "step": 8,
                                                          "tooltip": "The width of the latent images in pixels."}]


def test_save_and_load_latent_roundtrip(base_dir):
    from models import folders
    from nodes import latent_io
    folders.configure(base=str(base_dir))
    samples = {"samples": torch.randn(1, 4, 8, 8)}
    ui = latent_io.SaveLatent().save(samples, "latents/run", prompt={"1": {}})
    item = ui["ui"]["latents"][0]
    assert item == {"filename": "run_00001_.latent", "subfolder": "latents", "type": "output"}
    src = base_dir / "output" / "latents" / "run_00001_.latent"
    (base_dir / "input" / "x.latent").write_bytes(src.read_bytes())
    assert latent_io.LoadLatent.INPUT_TYPES()["required"]["latent"][0] == ["x.latent"]
    (loaded,) = latent_io.LoadLatent().load("x.latent")
    assert torch.equal(loaded["samples"], samples["samples"])
    assert latent_io.LoadLatent.VALIDATE_INPUTS("nope.latent") == "Invalid latent file: nope.latent"
