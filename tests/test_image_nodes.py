"""Image and mask nodes: real pixels in, real pixels out; files saved as ComfyUI names them."""
import json
import os

import numpy as np
import torch
from PIL import Image

from nodes import compositing, image, image_io, mask
from nodes.image_save import get_save_image_path


def px(t, y=0, x=0):
    return [round(float(v), 4) for v in t[0, y, x]]


def test_empty_image_color_and_invert():
    (img,) = image.EmptyImage().generate(4, 3, 2, 0xFF8000)
    assert img.shape == (2, 3, 4, 3) and px(img) == [1.0, round(128 / 255, 4), 0.0]
    (inv,) = image.ImageInvert().invert(img)
    assert px(inv) == [0.0, round(1 - 128 / 255, 4), 1.0]


def test_scale_keeps_aspect_and_scale_by():
    img = torch.rand(1, 10, 20, 3)
    (a,) = image.ImageScale().upscale(img, "bilinear", 0, 5, "disabled")
    assert a.shape == (1, 5, 10, 3)
    (b,) = image.ImageScaleBy().upscale(img, "nearest-exact", 2.0)
    assert b.shape == (1, 20, 40, 3)
    (c,) = image.ImageScale().upscale(img, "lanczos", 8, 8, "center")
    assert c.shape == (1, 8, 8, 3)


def test_batch_resizes_and_adds_alpha():
    a, b = torch.rand(1, 8, 8, 4), torch.rand(1, 4, 4, 3)
    (out,) = image.ImageBatch().batch(a, b)
    assert out.shape == (2, 8, 8, 4) and torch.all(out[1, :, :, 3] == 1.0)


def test_pad_for_outpaint_grey_fill_and_feathered_mask():
    img = torch.zeros(1, 20, 20, 3)
    out, m = image.ImagePadForOutpaint().expand_image(img, 8, 0, 0, 0, 4)
    assert out.shape == (1, 20, 28, 3) and px(out) == [0.5, 0.5, 0.5]
    assert m.shape == (1, 20, 28)
    assert float(m[0, 10, 0]) == 1.0  # new area fully masked
    assert float(m[0, 10, 8]) == 1.0  # first original column: ((4-0)/4)^2
    assert abs(float(m[0, 10, 9]) - (3 / 4) ** 2) < 1e-6
    assert float(m[0, 10, 20]) == 0.0


def test_mask_nodes():
    (solid,) = mask.SolidMask.execute(0.25, 6, 4).args
    assert solid.shape == (1, 4, 6) and float(solid.mean()) == 0.25
    (inv,) = mask.InvertMask.execute(solid).args
    assert float(inv.mean()) == 0.75
    (as_img,) = mask.MaskToImage.execute(solid).args
    assert as_img.shape == (1, 4, 6, 3)
    (back,) = mask.ImageToMask.execute(as_img, "green").args
    assert torch.equal(back, solid)
    (crop,) = mask.CropMask.execute(torch.arange(24.).view(1, 4, 6), 1, 2, 3, 5).args
    assert crop.tolist() == [[[13.0, 14.0, 15.0], [19.0, 20.0, 21.0]]]
    (thr,) = mask.ThresholdMask.execute(torch.tensor([[[0.2, 0.7]]]), 0.5).args
    assert thr.tolist() == [[[0.0, 1.0]]]
    point = torch.zeros(1, 5, 5)
    point[0, 2, 2] = 1
    (grown,) = mask.GrowMask.execute(point, 1, True).args
    assert int(grown.sum()) == 5  # a plus shape with tapered corners
    (grown_sq,) = mask.GrowMask.execute(point, 1, False).args
    assert int(grown_sq.sum()) == 9
    (comp,) = mask.MaskComposite.execute(torch.ones(1, 4, 4), torch.ones(1, 2, 2), 1, 1, "subtract").args
    assert int(comp.sum()) == 12
    (feather,) = mask.FeatherMask.execute(torch.ones(1, 4, 4), 2, 0, 0, 0).args
    assert feather[0, 0, :3].tolist() == [0.5, 1.0, 1.0]


def test_color_to_mask_and_composite_masked():
    img = torch.zeros(1, 2, 2, 3)
    img[0, 0, 0] = torch.tensor([1.0, 0.0, 0.0])
    (m,) = mask.ImageColorToMask.execute(img, 0xFF0000).args
    assert m.tolist() == [[[1.0, 0.0], [0.0, 0.0]]]
    dst, src = torch.zeros(1, 4, 4, 3), torch.ones(1, 2, 2, 3)
    (out,) = mask.ImageCompositeMasked.execute(dst, src, 1, 1, False, None).args
    assert float(out[0, 1:3, 1:3].mean()) == 1.0 and float(out.sum()) == 12.0


def test_alpha_split_join_crop_blend():
    rgba = torch.rand(1, 4, 4, 4)
    rgb, alpha_mask = compositing.SplitImageWithAlpha.execute(rgba).args
    assert rgb.shape == (1, 4, 4, 3) and torch.allclose(alpha_mask, 1 - rgba[..., 3])
    (joined,) = compositing.JoinImageWithAlpha.execute(rgb, alpha_mask).args
    assert torch.allclose(joined, rgba, atol=1e-6)
    (crop,) = compositing.ImageCrop.execute(rgb, 2, 2, 3, 3).args
    assert crop.shape == (1, 1, 1, 3)
    a, b = torch.full((1, 2, 2, 3), 0.4), torch.full((1, 2, 2, 3), 0.5)
    (mul,) = compositing.ImageBlend.execute(a, b, 1.0, "multiply").args
    assert torch.allclose(mul, torch.full_like(a, 0.2))


def test_save_image_names_counter_and_metadata(base_dir):
    from models import folders
    folders.configure(base=str(base_dir))
    out_dir = folders.state().output
    img = torch.rand(2, 8, 8, 3)
    ui = image_io.SaveImage().save_images(img, "run/shot", prompt={"1": {}}, extra_pnginfo={"workflow": {"id": "w"}})
    names = [i["filename"] for i in ui["ui"]["images"]]
    assert names == ["shot_00001_.png", "shot_00002_.png"] and ui["ui"]["images"][0]["subfolder"] == "run"
    with Image.open(os.path.join(out_dir, "run", names[0])) as f:
        assert json.loads(f.text["prompt"]) == {"1": {}} and json.loads(f.text["workflow"]) == {"id": "w"}
        assert np.allclose(np.asarray(f) / 255.0, img[0].numpy(), atol=1 / 255)
    ui2 = image_io.SaveImage().save_images(img[:1], "run/shot")
    assert ui2["ui"]["images"][0]["filename"] == "shot_00003_.png"
    assert get_save_image_path("%width%x%height%", out_dir, 64, 32)[1] == "64x32"
    import pytest
    with pytest.raises(Exception):
        get_save_image_path("../escape", out_dir)
    prev = image_io.PreviewImage().save_images(img[:1])["ui"]["images"][0]
    assert prev["type"] == "temp" and prev["filename"].startswith("ComfyUI_temp_")


def test_load_image_mask_and_validation(base_dir):
    from models import folders
    folders.configure(base=str(base_dir))
    rgba = np.zeros((6, 5, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 64
    Image.fromarray(rgba, "RGBA").save(base_dir / "input" / "a.png")
    Image.new("RGB", (3, 3), (0, 0, 255)).save(base_dir / "input" / "b.jpg")
    assert image_io.LoadImage.INPUT_TYPES()["required"]["image"][0] == ["a.png", "b.jpg"]
    img, m = image_io.LoadImage().load_image("a.png")
    assert img.shape == (1, 6, 5, 3) and px(img) == [1.0, 0.0, 0.0]
    assert abs(float(m[0, 0, 0]) - (1 - 64 / 255)) < 1e-6
    _, m2 = image_io.LoadImage().load_image("b.jpg")
    assert m2.shape == (1, 64, 64) and not m2.any()
    (ch,) = image_io.LoadImageMask().load_image("a.png", "red")
    assert float(ch.mean()) == 1.0
    assert image_io.LoadImage.VALIDATE_INPUTS("missing.png") == "Invalid image file: missing.png"
    assert len(image_io.LoadImage.IS_CHANGED("a.png")) == 64
