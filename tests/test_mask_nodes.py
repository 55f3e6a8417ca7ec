"""Mask and compositing nodes called directly (ComfyUI's comfy_extras nodes_mask and
nodes_compositing): exact values, shapes and edge behaviour."""
import pytest
import torch

from models import folders
from nodes import compositing, mask


def v3(result):
    return result.args


def test_solid_invert_threshold():
    (solid,) = v3(mask.SolidMask.execute(0.25, 6, 4))
    assert solid.shape == (1, 4, 6) and solid.dtype == torch.float32 and torch.all(solid == 0.25)
    (inv,) = v3(mask.InvertMask.execute(solid))
    assert torch.all(inv == 0.75)
    (thr,) = v3(mask.ThresholdMask.execute(torch.tensor([[[0.2, 0.5, 0.7]]]), 0.5))
    assert thr.tolist() == [[[0.0, 0.0, 1.0]]]  # strictly greater


def test_mask_image_conversions():
    m = torch.rand(2, 3, 4)
    (img,) = v3(mask.MaskToImage.execute(m))
    assert img.shape == (2, 3, 4, 3) and all(torch.equal(img[..., c], m) for c in range(3))
    (single,) = v3(mask.MaskToImage.execute(m[0]))  # [H,W] masks become a batch of one
    assert single.shape == (1, 3, 4, 3)
    rgba = torch.rand(1, 3, 4, 4)
    for i, ch in enumerate(["red", "green", "blue", "alpha"]):
        assert torch.equal(v3(mask.ImageToMask.execute(rgba, ch))[0], rgba[..., i])


def test_color_to_mask_rounds_to_8_bit():
    img = torch.zeros(1, 2, 2, 3)
    img[0, 0, 0] = torch.tensor([1.0, 0.5, 0.0])     # 0xFF8000 after rounding 127.5 -> 128
    img[0, 1, 1] = torch.tensor([1.2, 0.502, -0.1])  # clamped, also 0xFF8000
    (m,) = v3(mask.ImageColorToMask.execute(img, 0xFF8000))
    assert m.tolist() == [[[1.0, 0.0], [0.0, 1.0]]]
    assert v3(mask.ImageColorToMask.execute(img, 0))[0].tolist() == [[[0.0, 1.0], [1.0, 0.0]]]


def test_crop_mask_clips_at_the_edges():
    grid = torch.arange(24.0).view(1, 4, 6)
    (crop,) = v3(mask.CropMask.execute(grid, 1, 2, 3, 5))
    assert crop.tolist() == [[[13.0, 14.0, 15.0], [19.0, 20.0, 21.0]]]
    assert v3(mask.CropMask.execute(grid[0], 0, 0, 2, 1))[0].tolist() == [[[0.0, 1.0]]]


@pytest.mark.parametrize("op,expected", [
    ("multiply", lambda d, s: d * s), ("add", lambda d, s: min(d + s, 1.0)), ("subtract", lambda d, s: max(d - s, 0.0)),
    ("and", lambda d, s: float(round(d) and round(s))), ("or", lambda d, s: float(round(d) or round(s))),
    ("xor", lambda d, s: float(round(d) != round(s)))])
def test_mask_composite_operations(op, expected):
    dst = torch.full((1, 4, 4), 0.75)
    src = torch.tensor([[[0.25, 0.6], [0.0, 1.0]]])
    (out,) = v3(mask.MaskComposite.execute(dst, src, 1, 2, op))
    assert out.shape == (1, 4, 4)
    for (y, x), s in {(2, 1): 0.25, (2, 2): 0.6, (3, 1): 0.0, (3, 2): 1.0}.items():
        assert abs(float(out[0, y, x]) - expected(0.75, s)) < 1e-6
    assert float(out[0, 0, 0]) == 0.75 and float(out[0, 2, 3]) == 0.75  # outside the source: untouched


def test_mask_composite_source_past_the_edge():
    (out,) = v3(mask.MaskComposite.execute(torch.zeros(1, 3, 3), torch.ones(1, 4, 4), 2, 1, "add"))
    assert out[0].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 1]]


def test_feather_mask_ramps():
    (left,) = v3(mask.FeatherMask.execute(torch.ones(1, 2, 4), 4, 0, 0, 0))
    assert left[0, 0].tolist() == [0.25, 0.5, 0.75, 1.0]
    (top,) = v3(mask.FeatherMask.execute(torch.ones(1, 4, 1), 0, 2, 0, 0))
    assert top[0, :, 0].tolist() == [0.5, 1.0, 1.0, 1.0]
    # the right/bottom ramps index with -i, so i = 0 hits column/row 0: ComfyUI's quirk is kept
    (right,) = v3(mask.FeatherMask.execute(torch.ones(1, 1, 5), 0, 0, 2, 0))
    assert right[0, 0].tolist() == [0.5, 1.0, 1.0, 1.0, 1.0]
    (right3,) = v3(mask.FeatherMask.execute(torch.ones(1, 1, 5), 0, 0, 3, 0))
    assert [round(v, 6) for v in right3[0, 0].tolist()] == [round(1 / 3, 6), 1.0, 1.0, 1.0, round(2 / 3, 6)]
    (huge,) = v3(mask.FeatherMask.execute(torch.ones(1, 2, 2), 100, 0, 0, 0))  # clamped to the width
    assert huge[0, 0].tolist() == [0.5, 1.0]


def test_grow_mask_dilates_and_erodes():
    point = torch.zeros(1, 7, 7)
    point[0, 3, 3] = 1
    (plus,) = v3(mask.GrowMask.execute(point, 1, True))
    assert int(plus.sum()) == 5 and float(plus[0, 2, 2]) == 0.0
    (square,) = v3(mask.GrowMask.execute(point, 1, False))
    assert int(square.sum()) == 9
    (diamond,) = v3(mask.GrowMask.execute(point, 2, True))
    assert int(diamond.sum()) == 13
    (back,) = v3(mask.GrowMask.execute(square, -1, False))
    assert torch.equal(back, point)
    soft = torch.tensor([[[0.0, 0.3, 0.0]]])
    assert torch.equal(v3(mask.GrowMask.execute(soft, 1, True))[0], torch.full((1, 1, 3), 0.3))  # grey spreads
    assert torch.equal(v3(mask.GrowMask.execute(point, 0, True))[0], point)


def test_image_composite_masked():
    dst, src = torch.zeros(1, 4, 4, 3), torch.ones(1, 2, 2, 3)
    (plain,) = v3(mask.ImageCompositeMasked.execute(dst, src, 1, 1, False, None))
    assert float(plain[0, 1:3, 1:3].mean()) == 1.0 and float(plain.sum()) == 12.0 and float(dst.sum()) == 0.0
    (edge,) = v3(mask.ImageCompositeMasked.execute(dst, src, 3, 3, False, None))  # clipped at the border
    assert float(edge.sum()) == 3.0 and float(edge[0, 3, 3, 0]) == 1.0
    half = torch.full((1, 2, 2), 0.5)
    (masked,) = v3(mask.ImageCompositeMasked.execute(dst, src, 0, 0, False, half))
    assert torch.allclose(masked[0, :2, :2], torch.full((2, 2, 3), 0.5)) and float(masked[0, 2:].sum()) == 0.0
    (stretched,) = v3(mask.ImageCompositeMasked.execute(dst, src, 0, 0, True, None))
    assert torch.all(stretched == 1.0)
    (alpha,) = v3(mask.ImageCompositeMasked.execute(dst, torch.ones(1, 2, 2, 4), 0, 0, False, None))
    assert alpha.shape == (1, 4, 4, 3)  # the source's alpha is dropped for an RGB destination


def test_latent_composite_masked_uses_pixel_coordinates():
    dst = {"samples": torch.zeros(1, 4, 4, 4), "batch_index": [3]}
    src = {"samples": torch.ones(1, 4, 2, 2)}
    (out,) = v3(mask.LatentCompositeMasked.execute(dst, src, 16, 8, False, None))
    assert out["batch_index"] == [3] and float(dst["samples"].sum()) == 0.0
    s = out["samples"][0, 0]
    assert s[1:3, 2:4].tolist() == [[1, 1], [1, 1]] and float(s.sum()) == 4.0


def test_split_and_join_alpha():
    rgba = torch.rand(2, 4, 4, 4)
    rgb, alpha_mask = v3(compositing.SplitImageWithAlpha.execute(rgba))
    assert rgb.shape == (2, 4, 4, 3) and torch.equal(alpha_mask, 1.0 - rgba[..., 3])
    (joined,) = v3(compositing.JoinImageWithAlpha.execute(rgb, alpha_mask))
    assert torch.allclose(joined, rgba, atol=1e-6)
    _, opaque = v3(compositing.SplitImageWithAlpha.execute(torch.rand(1, 2, 2, 3)))
    assert torch.all(opaque == 0.0)
    (resized,) = v3(compositing.JoinImageWithAlpha.execute(torch.rand(1, 6, 6, 3), torch.zeros(3, 3)))
    assert resized.shape == (1, 6, 6, 4) and torch.all(resized[..., 3] == 1.0)


def _pd(mode, src_rgb, src_mask, dst_rgb, dst_mask):
    def img(v):
        return torch.full((1, 2, 2, 3), v)

    def msk(v):
        return torch.full((1, 2, 2), v)
    out, out_mask = v3(compositing.PorterDuffImageComposite.execute(img(src_rgb), msk(src_mask), img(dst_rgb),
                                                                    msk(dst_mask), mode))
    return float(out[0, 0, 0, 0]), float(out_mask[0, 0, 0])


def test_porter_duff_operators():
    # masks are 1 - alpha: a source with mask 0.5 is half transparent
    assert _pd("SRC", 0.8, 0.0, 0.2, 0.0) == pytest.approx((0.8, 0.0))
    assert _pd("DST", 0.8, 0.0, 0.2, 0.0) == pytest.approx((0.2, 0.0))
    assert _pd("CLEAR", 0.8, 0.0, 0.2, 0.0) == (0.0, 1.0)
    # src over: alpha 0.5 + 0.5*1 = 1; colour 0.8*0.5 + 0.5*0.2 = 0.5
    assert _pd("SRC_OVER", 0.8, 0.5, 0.2, 0.0) == pytest.approx((0.5, 0.0))
    # xor of two opaque layers is empty
    assert _pd("XOR", 0.8, 0.0, 0.2, 0.0) == pytest.approx((0.0, 1.0))
    assert _pd("MULTIPLY", 0.5, 0.0, 0.4, 0.0) == pytest.approx((0.2, 0.0))
    assert _pd("ADD", 0.8, 0.0, 0.6, 0.0) == pytest.approx((1.0, 0.0))
    # destination-in keeps the destination where the source is: alpha 0.5 * 1
    assert _pd("DST_IN", 0.8, 0.5, 0.2, 0.0) == pytest.approx((0.2, 0.5))


def test_porter_duff_fits_source_to_destination():
    src, dst = torch.rand(1, 3, 3, 3), torch.rand(1, 6, 8, 3)
    out, out_mask = v3(compositing.PorterDuffImageComposite.execute(src, torch.zeros(1, 3, 3), dst,
                                                                    torch.zeros(1, 2, 2), "DST"))
    assert out.shape == (1, 6, 8, 3) and out_mask.shape == (1, 6, 8) and torch.allclose(out, dst, atol=1e-6)
    with pytest.raises(ValueError):
        compositing.PorterDuffImageComposite.execute(torch.rand(1, 2, 2, 4), torch.zeros(1, 2, 2), dst,
                                                     torch.zeros(1, 2, 2), "SRC")


def test_mask_preview_writes_a_grey_temp_png(base_dir):
    from PIL import Image
    folders.configure(base=str(base_dir))
    m = torch.zeros(1, 3, 5)
    m[0, 1, 2] = 1.0
    out = mask.MaskPreview.EXECUTE_NORMALIZED(mask=m, prompt=None, extra_pnginfo=None)
    item = out.ui.as_dict()["images"][0]
    assert item["type"] == "temp"
    with Image.open(base_dir / "temp" / item["filename"]) as f:
        assert f.size == (5, 3) and f.getpixel((2, 1)) == (255, 255, 255) and f.getpixel((0, 0)) == (0, 0, 0)


def test_pre_v3_method_names_still_work():
    assert torch.equal(mask.InvertMask.invert(torch.zeros(1, 2, 2))[0], torch.ones(1, 2, 2))
    assert mask.SolidMask.solid(1.0, 2, 3)[0].shape == (1, 3, 2)
