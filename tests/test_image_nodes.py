"""Image nodes called directly: real pixels in, real pixels out (core nodes.py image nodes,
comfy_extras image transforms and post-processing)."""
import math

import pytest
import torch

from nodes import image, image_transform as tf, postprocessing as pp
from nodes.image_ops import gaussian_kernel


def v3(result):
    return result.args


def test_empty_image_color_and_invert():
    (img,) = image.EmptyImage().generate(4, 3, 2, 0xFF8000)
    assert img.shape == (2, 3, 4, 3) and img.dtype == torch.float32
    assert torch.equal(img[1, 2, 3], torch.tensor([1.0, 128 / 255, 0.0]))
    (inv,) = image.ImageInvert().invert(img)
    assert torch.allclose(inv[0, 0, 0], torch.tensor([0.0, 1 - 128 / 255, 1.0]))


def test_scale_nearest_repeats_pixels_and_keeps_aspect():
    img = torch.tensor([[[0.0] * 3, [1.0] * 3], [[0.25] * 3, [0.75] * 3]]).unsqueeze(0)  # 2x2
    (big,) = image.ImageScale().upscale(img, "nearest-exact", 4, 4, "disabled")
    assert big[0, :, :, 0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [0.25, 0.25, 0.75, 0.75], [0.25, 0.25, 0.75, 0.75]]
    wide = torch.rand(1, 10, 20, 3)
    assert image.ImageScale().upscale(wide, "bilinear", 0, 5, "disabled")[0].shape == (1, 5, 10, 3)
    assert image.ImageScale().upscale(wide, "bilinear", 7, 0, "disabled")[0].shape == (1, 4, 7, 3)  # round(3.5)
    assert image.ImageScale().upscale(wide, "area", 0, 0, "disabled")[0] is wide


def test_scale_center_crop_takes_the_middle():
    img = torch.arange(8.0).view(1, 1, 8, 1).expand(1, 2, 8, 3).contiguous()  # columns 0..7, 2 rows
    (out,) = image.ImageScale().upscale(img, "nearest-exact", 2, 2, "center")
    assert out[0, 0, :, 0].tolist() == [3.0, 4.0]  # 8x2 cropped to the square of columns 3-4
    (lz,) = image.ImageScale().upscale(torch.rand(1, 8, 8, 3), "lanczos", 4, 4, "center")
    assert lz.shape == (1, 4, 4, 3)


def test_scale_by_area_averages():
    img = torch.zeros(1, 4, 4, 3)
    img[:, :2, :2] = 1.0
    (out,) = image.ImageScaleBy().upscale(img, "area", 0.5)
    assert out.shape == (1, 2, 2, 3) and out[0, :, :, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_scale_to_total_pixels_rounds_to_steps():
    img = torch.rand(1, 50, 100, 3)
    (out,) = v3(pp.ImageScaleToTotalPixels.execute(img, "bilinear", 0.01, 8))
    scale = math.sqrt(0.01 * 1024 * 1024 / 5000)
    assert out.shape == (1, round(50 * scale / 8) * 8, round(100 * scale / 8) * 8, 3)


def test_batch_resizes_and_adds_alpha():
    a, b = torch.rand(1, 8, 8, 4), torch.rand(1, 4, 4, 3)
    (out,) = image.ImageBatch().batch(a, b)
    assert out.shape == (2, 8, 8, 4) and torch.all(out[1, :, :, 3] == 1.0) and torch.equal(out[0], a[0])


def _outpaint_reference(h, w, left, top, right, bottom, feathering):
    """The mask formula written out per pixel (distance to the nearest padded side)."""
    mask = torch.ones(h + top + bottom, w + left + right)
    for i in range(h):
        for j in range(w):
            d = min(i if top else h, h - i if bottom else h, j if left else w, w - j if right else w)
            v = (feathering - d) / feathering if feathering and feathering * 2 < h and feathering * 2 < w else None
            mask[top + i, left + j] = v * v if v is not None and d < feathering else 0.0
    return mask


@pytest.mark.parametrize("sides", [(8, 0, 0, 0, 4), (0, 8, 16, 0, 5), (8, 8, 8, 8, 3), (8, 0, 0, 0, 0), (8, 0, 0, 0, 12)])
def test_pad_for_outpaint(sides):
    img = torch.rand(2, 20, 22, 3)
    out, m = image.ImagePadForOutpaint().expand_image(img, *sides)
    left, top, right, bottom, feather = sides
    assert out.shape == (2, 20 + top + bottom, 22 + left + right, 3)
    assert torch.equal(out[:, top:top + 20, left:left + 22], img)
    if left:
        assert torch.all(out[:, :, 0] == 0.5)
    assert torch.allclose(m[0], _outpaint_reference(20, 22, *sides), atol=1e-7)


def test_crop_clamps_corner_and_size():
    img = torch.arange(30.0).view(1, 5, 6, 1).expand(1, 5, 6, 3)
    (c,) = v3(tf.ImageCrop.execute(img, 2, 3, 1, 1))
    assert c.shape == (1, 3, 2, 3) and c[0, :, :, 0].tolist() == [[7, 8], [13, 14], [19, 20]]
    (edge,) = v3(tf.ImageCrop.execute(img, 10, 10, 100, 100))  # corner clamped to the last pixel
    assert edge.shape == (1, 1, 1, 3) and float(edge[0, 0, 0, 0]) == 29.0


def test_batch_picking_and_repeating():
    img = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 2, 2, 3)
    (rep,) = v3(tf.RepeatImageBatch.execute(img[:2], 3))
    assert rep[:, 0, 0, 0].tolist() == [0, 1, 0, 1, 0, 1]
    (pick,) = v3(tf.ImageFromBatch.execute(img, 1, 2))
    assert pick[:, 0, 0, 0].tolist() == [1, 2]
    (late,) = v3(tf.ImageFromBatch.execute(img, 10, 5))  # index clamped to the last image
    assert late[:, 0, 0, 0].tolist() == [3]


def test_rotate_and_flip_move_pixels():
    img = torch.zeros(1, 2, 3, 3)
    img[0, 0, 0] = 1.0  # top-left
    (r90,) = v3(tf.ImageRotate.execute(img, "90 degrees"))
    assert r90.shape == (1, 3, 2, 3) and float(r90[0, 0, 1, 0]) == 1.0  # clockwise: top-right
    (r180,) = v3(tf.ImageRotate.execute(img, "180 degrees"))
    assert float(r180[0, 1, 2, 0]) == 1.0
    (r270,) = v3(tf.ImageRotate.execute(img, "270 degrees"))
    assert float(r270[0, 2, 0, 0]) == 1.0
    assert torch.equal(v3(tf.ImageRotate.execute(img, "none"))[0], img)
    (fx,) = v3(tf.ImageFlip.execute(img, "x-axis: vertically"))
    assert float(fx[0, 1, 0, 0]) == 1.0
    (fy,) = v3(tf.ImageFlip.execute(img, "y-axis: horizontally"))
    assert float(fy[0, 0, 2, 0]) == 1.0


def test_get_image_size_and_progress_text(monkeypatch):
    from nodes import settings
    sent = []
    monkeypatch.setattr(settings, "_progress_text_sender", lambda text, node: sent.append((text, node)))
    out = tf.GetImageSize.EXECUTE_NORMALIZED(image=torch.rand(3, 5, 7, 3), unique_id="12")
    assert out.args == (7, 5, 3)
    assert sent == [("width: 7, height: 5\n batch size: 3", "12")]


def test_stitch_directions_spacing_and_matching():
    a, b = torch.zeros(1, 4, 6, 3), torch.ones(1, 2, 3, 3)
    (right,) = v3(tf.ImageStitch.execute(a, "right", True, 0, "white", b))
    assert right.shape == (1, 4, 12, 3) and float(right[0, :, 6:].min()) > 0.99  # b scaled to height 4
    (up,) = v3(tf.ImageStitch.execute(a, "up", False, 2, "red", b))
    assert up.shape == (1, 2 + 2 + 4, 6, 3)
    assert up[0, 2, 0].tolist() == [1.0, 0.0, 0.0]  # the red spacer row
    assert up[0, 0, 0, 0] == 0.0 and up[0, 0, 1, 0] == 1.0  # b centred, padded with 0 (red is not grey)
    assert torch.equal(v3(tf.ImageStitch.execute(a, "left", True, 0, "white"))[0], a)
    (rgba,) = v3(tf.ImageStitch.execute(a, "down", False, 0, "black", torch.rand(2, 3, 6, 4)))
    assert rgba.shape == (2, 7, 6, 4) and torch.all(rgba[:, :4, :, 3] == 1.0)  # batch and alpha filled in


def test_resize_and_pad_centres_the_image():
    img = torch.full((1, 10, 20, 3), 0.3)
    (out,) = v3(tf.ResizeAndPadImage.execute(img, 40, 40, "white", "bilinear"))
    assert out.shape == (1, 40, 40, 3)
    assert torch.all(out[0, :10] == 1.0) and torch.all(out[0, 30:] == 1.0)
    assert torch.allclose(out[0, 10:30], torch.full((20, 40, 3), 0.3))


def test_scale_to_max_dimension():
    (tall,) = v3(tf.ImageScaleToMaxDimension.execute(torch.rand(1, 40, 10, 3), "area", 20))
    (sq,) = v3(tf.ImageScaleToMaxDimension.execute(torch.rand(1, 9, 9, 3), "bicubic", 4))
    assert tall.shape == (1, 20, 5, 3) and sq.shape == (1, 4, 4, 3)


def test_add_noise_is_seeded_and_clipped():
    img = torch.full((1, 8, 8, 3), 0.5)
    (a,) = v3(tf.ImageAddNoise.execute(img, 7, 0.5))
    (b,) = v3(tf.ImageAddNoise.execute(img, 7, 0.5))
    (c,) = v3(tf.ImageAddNoise.execute(img, 8, 0.5))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0 and float((a - 0.5).abs().max()) > 0.1
    expected = torch.clip(img + 0.5 * torch.randn(img.size(), generator=torch.Generator().manual_seed(7)), 0, 1)
    assert torch.equal(a, expected)


@pytest.mark.parametrize("mode,formula", [
    ("normal", lambda a, b: b), ("multiply", lambda a, b: a * b), ("screen", lambda a, b: 1 - (1 - a) * (1 - b)),
    ("difference", lambda a, b: a - b),
    ("overlay", lambda a, b: 2 * a * b if a <= 0.5 else 1 - 2 * (1 - a) * (1 - b))])
def test_blend_modes(mode, formula):
    for a, b in ((0.4, 0.3), (0.8, 0.6)):
        (out,) = v3(pp.Blend.execute(torch.full((1, 2, 2, 3), a), torch.full((1, 2, 2, 3), b), 0.25, mode))
        expected = min(max(a * 0.75 + formula(a, b) * 0.25, 0.0), 1.0)
        assert abs(float(out[0, 0, 0, 0]) - expected) < 1e-6


def test_blend_resizes_second_image_and_soft_light_identity():
    a = torch.rand(1, 6, 6, 3)
    (out,) = v3(pp.Blend.execute(a, torch.full((1, 3, 5, 3), 0.5), 1.0, "soft_light"))
    assert out.shape == a.shape and torch.allclose(out, a, atol=1e-6)  # soft light with 0.5 changes nothing


def test_blur_keeps_flat_images_and_spreads_an_impulse():
    flat = torch.full((1, 9, 9, 3), 0.7)
    assert torch.allclose(v3(pp.Blur.execute(flat, 2, 1.0))[0], flat, atol=1e-6)
    img = torch.zeros(1, 9, 9, 1)
    img[0, 4, 4, 0] = 1.0
    (out,) = v3(pp.Blur.execute(img, 1, 0.5))
    k = gaussian_kernel(3, 0.5)
    assert torch.allclose(out[0, 3:6, 3:6, 0], k, atol=1e-6) and float(out[0, 0, 0, 0]) == 0.0
    d = math.sqrt(2.0)  # corner weight of the [-1,1] grid: exp(-d^2 / (2 sigma^2)), normalised
    w = [math.exp(-(r * r) / (2 * 0.25)) for r in (0.0, 1.0, d)]
    assert abs(float(k[0, 0]) - w[2] / (w[0] + 4 * w[1] + 4 * w[2])) < 1e-6


def test_sharpen_keeps_flat_images_and_raises_edge_contrast():
    flat = torch.full((1, 8, 8, 3), 0.4)
    assert torch.allclose(v3(pp.Sharpen.execute(flat, 1, 1.0, 1.0))[0], flat, atol=1e-5)
    edge = torch.full((1, 8, 8, 3), 0.3)
    edge[:, :, 4:] = 0.6
    (out,) = v3(pp.Sharpen.execute(edge, 1, 1.0, 0.5))
    assert float(out[0, 4, 3, 0]) < 0.3 and float(out[0, 4, 4, 0]) > 0.6
    assert torch.allclose(out[0, :, 0], edge[0, :, 0], atol=1e-5)  # far from the edge: unchanged


@pytest.mark.parametrize("dither", ["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"])
def test_quantize_uses_only_palette_colours(dither):
    gradient = torch.linspace(0, 1, 32).view(1, 1, 32, 1).expand(1, 8, 32, 3).contiguous()
    (out,) = v3(pp.Quantize.execute(gradient, 4, dither))
    colours = {tuple(round(float(v) * 255) for v in px) for px in out.reshape(-1, 3)}
    assert out.shape == gradient.shape and 2 <= len(colours) <= 4


def test_quantize_with_enough_colours_is_lossless():
    two = torch.zeros(1, 4, 4, 3)
    two[:, :2] = torch.tensor([1.0, 0.0, 0.0])
    assert torch.equal(v3(pp.Quantize.execute(two, 256, "none"))[0], two)


def test_bayer_matrix_is_a_permutation_of_thresholds():
    m = pp.Quantize.bayer_matrix(2)
    assert m.shape == (4, 4) and sorted((m * 16 + 7.5).round().flatten().tolist()) == list(range(16))
