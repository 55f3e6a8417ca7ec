"""LoadImage / LoadImageMask / LoadImageOutput / SaveImage / PreviewImage against real files,
and the /object_info entries of image nodes over HTTP."""
import io
import json
import os
import re
import time

import aiohttp
import numpy as np
import pytest
import torch
from PIL import Image

from models import folders
from nodes import image_io, settings
from nodes.image_save import get_save_image_path


@pytest.fixture
def dirs(base_dir):
    folders.configure(base=str(base_dir))
    settings.configure()
    yield base_dir
    settings.configure()


# --- saving -------------------------------------------------------------------

def test_save_writes_pixels_names_and_metadata(dirs):
    img = torch.rand(2, 8, 6, 3)
    ui = image_io.SaveImage().save_images(img, "run/shot", prompt={"1": {"class_type": "X"}},
                                          extra_pnginfo={"workflow": {"id": "w"}, "note": "hi"})
    assert ui == {"ui": {"images": [{"filename": "shot_00001_.png", "subfolder": "run", "type": "output"},
                                    {"filename": "shot_00002_.png", "subfolder": "run", "type": "output"}]}}
    with Image.open(dirs / "output" / "run" / "shot_00002_.png") as f:
        assert f.size == (6, 8) and f.mode == "RGB"
        assert dict(f.text) == {"prompt": '{"1": {"class_type": "X"}}', "workflow": '{"id": "w"}', "note": '"hi"'}
        expected = np.clip(255.0 * img[1].numpy(), 0, 255).astype(np.uint8)  # truncated, not rounded
        assert np.array_equal(np.asarray(f), expected)


def test_save_without_prompt_or_with_metadata_disabled(dirs):
    image_io.SaveImage().save_images(torch.rand(1, 4, 4, 3), "plain")
    with Image.open(dirs / "output" / "plain_00001_.png") as f:
        assert dict(f.text) == {}
    settings.configure(disable_metadata=True)
    image_io.SaveImage().save_images(torch.rand(1, 4, 4, 3), "plain", prompt={"1": {}}, extra_pnginfo={"a": 1})
    with Image.open(dirs / "output" / "plain_00002_.png") as f:
        assert dict(f.text) == {}


def test_counter_continues_after_the_highest_number(dirs):
    out = dirs / "output"
    for name in ("img_00004_.png", "img_00011_.png", "img_x_.png", "img_00099", "image_00500_.png", "IMG_00300_.png",
                 "img"):
        (out / name).write_bytes(b"")
    names = [i["filename"] for i in image_io.SaveImage().save_images(torch.rand(2, 4, 4, 3), "img")["ui"]["images"]]
    # img_00099 has no trailing "_" after the number but still counts: the number is read up to the next "_"
    assert names == ["img_00100_.png", "img_00101_.png"]
    folder, stem, counter, subfolder, prefix = get_save_image_path("image", str(out))
    assert (folder, stem, counter, subfolder, prefix) == (os.path.join(str(out), ""), "image", 501, "", "image")
    assert get_save_image_path("fresh/dir/a", str(out))[2] == 1 and (out / "fresh" / "dir").is_dir()


def test_prefix_tokens_and_batch_number(dirs):
    now = time.localtime()
    ui = image_io.SaveImage().save_images(torch.rand(2, 5, 7, 3), "%width%x%height%/%year%-%month%_b%batch_num%")
    first, second = ui["ui"]["images"]
    stamp = f"{now.tm_year}-{now.tm_mon:02d}"
    assert first["subfolder"] == "7x5" and first["filename"] == f"{stamp}_b0_00001_.png"
    assert second["filename"] == f"{stamp}_b1_00002_.png"
    assert get_save_image_path("%date:yyyy%", str(dirs / "output"))[1] == "%date:yyyy%"  # frontend-only token


def test_time_tokens_are_zero_padded(dirs, monkeypatch):
    import nodes.image_save as image_save
    fixed = time.struct_time((2024, 3, 7, 5, 9, 2, 3, 67, 0))
    monkeypatch.setattr(image_save.time, "localtime", lambda *a: fixed)
    assert get_save_image_path("%year%%month%%day%_%hour%%minute%%second%", str(dirs / "output"))[1] == \
        "20240307_050902"


def test_prefix_outside_the_output_folder_is_refused(dirs):
    with pytest.raises(Exception, match="Saving image outside the output folder is not allowed"):
        image_io.SaveImage().save_images(torch.rand(1, 2, 2, 3), "../escape")
    with pytest.raises(Exception, match="not allowed"):
        get_save_image_path("a/../../b", str(dirs / "output"))
    assert not (dirs / "escape_00001_.png").exists()


def test_compression_levels(dirs, monkeypatch):
    seen = []
    original = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", lambda self, fp, *a, **kw: (seen.append(kw["compress_level"]),
                                                                          original(self, fp, *a, **kw)))
    image_io.SaveImage().save_images(torch.rand(1, 2, 2, 3))
    image_io.PreviewImage().save_images(torch.rand(1, 2, 2, 3))
    assert seen == [4, 1]


def test_preview_goes_to_temp_with_a_random_suffix(dirs):
    item = image_io.PreviewImage().save_images(torch.rand(1, 3, 3, 3), prompt={"1": {}})["ui"]["images"][0]
    assert item["type"] == "temp" and item["subfolder"] == ""
    assert re.fullmatch(r"ComfyUI_temp_[a-z]{5}_00001_\.png", item["filename"])
    assert (dirs / "temp" / item["filename"]).is_file()
    with Image.open(dirs / "temp" / item["filename"]) as f:
        assert json.loads(f.text["prompt"]) == {"1": {}}


# --- loading ------------------------------------------------------------------

def _save(path, array, mode=None, **kw):
    Image.fromarray(array, mode).save(path, **kw) if mode else Image.fromarray(array).save(path, **kw)


def test_load_rgba_gives_rgb_and_inverted_alpha(dirs):
    rgba = np.zeros((6, 5, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 64
    rgba[0, 0, 3] = 255
    _save(dirs / "input" / "a.png", rgba)
    img, mask = image_io.LoadImage().load_image("a.png")
    assert img.shape == (1, 6, 5, 3) and img.dtype == torch.float32
    assert img[0, 1, 1].tolist() == [1.0, 0.0, 0.0]
    assert mask.shape == (1, 6, 5) and float(mask[0, 0, 0]) == 0.0
    assert abs(float(mask[0, 1, 1]) - (1 - 64 / 255)) < 1e-6


def test_load_without_alpha_gives_a_64px_empty_mask(dirs):
    Image.new("RGB", (3, 3), (0, 0, 255)).save(dirs / "input" / "b.jpg")
    img, mask = image_io.LoadImage().load_image("b.jpg")
    assert img.shape == (1, 3, 3, 3) and mask.shape == (1, 64, 64) and not mask.any()


def test_load_palette_transparency_and_32_bit(dirs):
    p = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), "P")
    p.putpalette([255, 0, 0, 0, 255, 0])
    p.save(dirs / "input" / "p.png", transparency=1)
    img, mask = image_io.LoadImage().load_image("p.png")
    assert img[0, 0, 0].tolist() == [1.0, 0.0, 0.0] and mask[0].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    Image.fromarray(np.full((2, 2), 255 * 100, dtype=np.int32)).save(dirs / "input" / "deep.tiff")
    img32, _ = image_io.LoadImage().load_image("deep.tiff")
    assert abs(float(img32[0, 0, 0, 0]) - 100 / 255) < 1e-6  # 32-bit 'I' values are divided by 255


def test_load_applies_exif_orientation(dirs):
    arr = np.zeros((4, 8, 3), dtype=np.uint8)
    arr[0, 0] = 255  # a white top-left pixel
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(dirs / "input" / "rot.png", exif=exif)
    img, _ = image_io.LoadImage().load_image("rot.png")
    assert img.shape == (1, 8, 4, 3) and float(img[0, 0, 3, 0]) == 1.0


def test_load_multi_frame_keeps_frames_of_the_first_size(dirs):
    frames = [Image.new("RGB", (4, 4), (v, v, v)) for v in (0, 100, 200)] + [Image.new("RGB", (2, 2))]
    frames[0].save(dirs / "input" / "anim.tiff", save_all=True, append_images=frames[1:])
    img, mask = image_io.LoadImage().load_image("anim.tiff")
    assert img.shape == (3, 4, 4, 3) and mask.shape == (3, 64, 64)
    assert [round(float(v) * 255) for v in img[:, 0, 0, 0]] == [0, 100, 200]


def test_annotated_names_and_output_loader(dirs):
    Image.new("RGB", (2, 3), (10, 20, 30)).save(dirs / "output" / "o.png")
    img, _ = image_io.LoadImage().load_image("o.png [output]")
    assert img.shape == (1, 3, 2, 3) and round(float(img[0, 0, 0, 2]) * 255) == 30
    assert image_io.LoadImageOutput().load_image("o.png [output]")[0].shape == (1, 3, 2, 3)
    assert image_io.LoadImage.VALIDATE_INPUTS("o.png [output]") is True
    assert image_io.LoadImage.VALIDATE_INPUTS("o.png") == "Invalid image file: o.png"


def test_listing_filters_and_change_detection(dirs):
    inp = dirs / "input"
    Image.new("RGB", (2, 2)).save(inp / "z.png")
    Image.new("RGB", (2, 2)).save(inp / "a.webp")
    (inp / "notes.txt").write_text("x")
    (inp / "noext").write_text("x")
    (inp / "sub").mkdir()
    Image.new("RGB", (2, 2)).save(inp / "sub" / "hidden.png")
    assert image_io.LoadImage.INPUT_TYPES() == {"required": {"image": (["a.webp", "z.png"], {"image_upload": True})}}
    assert image_io.LoadImageMask.INPUT_TYPES()["required"]["image"][0] == ["a.webp", "noext", "notes.txt", "z.png"]
    before = image_io.LoadImage.IS_CHANGED("z.png")
    assert before == image_io.LoadImageMask.IS_CHANGED("z.png", "red") and len(before) == 64
    Image.new("RGB", (2, 2), (1, 2, 3)).save(inp / "z.png")
    assert image_io.LoadImage.IS_CHANGED("z.png") != before


def test_load_image_mask_channels(dirs):
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 255, 51, 0, 204
    _save(dirs / "input" / "m.png", rgba)
    got = {ch: image_io.LoadImageMask().load_image("m.png", ch)[0] for ch in ("alpha", "red", "green", "blue")}
    assert all(t.shape == (1, 2, 3) for t in got.values())
    assert float(got["red"].mean()) == 1.0 and abs(float(got["green"].mean()) - 0.2) < 1e-6
    assert float(got["blue"].mean()) == 0.0 and abs(float(got["alpha"].mean()) - (1 - 0.8)) < 1e-6
    Image.new("L", (2, 2), 128).save(dirs / "input" / "grey.png")
    (alpha,) = image_io.LoadImageMask().load_image("grey.png", "alpha")  # opaque after RGBA conversion
    assert alpha.shape == (1, 2, 2) and not alpha.any()


# --- /object_info ---------------------------------------------------------------

async def test_object_info_save_image(client):
    info = (await (await client.get("/object_info/SaveImage")).json())["SaveImage"]
    assert info == {
        "input": {"required": {
            "images": ["IMAGE", {"tooltip": "The images to save."}],
            "filename_prefix": ["STRING", {"default": "ComfyUI", "tooltip": "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."}]},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}},
        "input_order": {"required": ["images", "filename_prefix"], "hidden": ["prompt", "extra_pnginfo"]},
        "output": [], "output_is_list": [], "output_name": [], "name": "SaveImage", "display_name": "Save Image",
        "description": "Saves the input images to your ComfyUI output directory.", "python_module": "nodes",
        "category": "image", "output_node": True}


async def test_object_info_lists_uploaded_images(client):
    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, format="PNG")
    form = aiohttp.FormData()
    form.add_field("image", buf.getvalue(), filename="up.png", content_type="image/png")
    assert (await client.post("/upload/image", data=form)).status == 200
    info = (await (await client.get("/object_info/LoadImage")).json())["LoadImage"]
    assert info["input"]["required"]["image"] == [["up.png"], {"image_upload": True}]
    assert info["output"] == ["IMAGE", "MASK"] and info["output_name"] == ["IMAGE", "MASK"]
    assert info["display_name"] == "Load Image" and info["category"] == "image"


async def test_object_info_v3_image_nodes(client):
    allinfo = await (await client.get("/object_info")).json()
    size = allinfo["GetImageSize"]
    assert size["output"] == ["INT", "INT", "INT"] and size["output_name"] == ["width", "height", "batch_size"]
    assert size["input"]["hidden"] == {"unique_id": ["UNIQUE_ID"]}
    assert size["python_module"] == "comfy_extras.nodes_images" and size["category"] == "image"
    assert allinfo["ImageCrop"]["input_order"] == {"required": ["image", "width", "height", "x", "y"]}
    assert allinfo["ImageBlur"]["input"]["required"]["blur_radius"] == ["INT", {"default": 1, "min": 1, "max": 31, "step": 1}]
    assert allinfo["ImageBlend"]["python_module"] == "comfy_extras.nodes_post_processing"
    assert allinfo["ImageScale"]["input"]["required"]["upscale_method"] == [
        ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]]
    assert allinfo["ImageBatch"]["deprecated"] is True
    assert allinfo["LoadImageOutput"]["experimental"] is True
    assert allinfo["ImagePadForOutpaint"]["input"]["required"]["left"] == [
        "INT", {"default": 0, "min": 0, "max": 16384, "step": 8}]


# --- animated savers (V3) ---------------------------------------------------------

def test_save_animated_png_and_webp(dirs):
    from nodes import image_savers
    frames = torch.stack([torch.full((4, 6, 3), v) for v in (0.0, 0.5, 1.0)])
    out = image_savers.SaveAnimatedPNG.EXECUTE_NORMALIZED(images=frames, fps=4.0, compress_level=4,
                                                          filename_prefix="anim", prompt={"1": {}},
                                                          extra_pnginfo={"workflow": {"id": "w"}})
    assert out.ui == {"images": [{"filename": "anim_00001_.png", "subfolder": "", "type": "output"}],
                      "animated": (True,)}
    raw = (dirs / "output" / "anim_00001_.png").read_bytes()
    assert raw.index(b"comfprompt\0{") > raw.index(b"IDAT")  # metadata after the image data
    assert b'comfworkflow\0{"id": "w"}' in raw
    with Image.open(dirs / "output" / "anim_00001_.png") as f:
        assert f.n_frames == 3 and f.info["duration"] == 250
        f.seek(1)
        assert f.convert("RGB").getpixel((0, 0)) == (127, 127, 127)
    out = image_savers.SaveAnimatedWEBP.EXECUTE_NORMALIZED(images=frames[:1], fps=6.0, filename_prefix="w/clip",
                                                           lossless=True, quality=80, method="fastest",
                                                           prompt={"2": {}}, extra_pnginfo={"workflow": 1, "b": 2})
    assert out.ui == {"images": [{"filename": "clip_00001_.webp", "subfolder": "w", "type": "output"}]}
    with Image.open(dirs / "output" / "w" / "clip_00001_.webp") as f:
        exif = f.getexif()
        assert exif[0x0110] == 'prompt:{"2": {}}' and exif[0x010F] == "workflow:1" and exif[0x010E] == "b:2"
        assert f.convert("RGB").getpixel((0, 0)) == (0, 0, 0)


def test_v3_png_saver_follows_disable_metadata(dirs):
    from nodes import image_savers
    from nodes.v3 import HiddenHolder

    class Node:
        hidden = HiddenHolder(prompt={"1": {}}, extra_pnginfo=None)
    names = image_savers.save_images(torch.rand(2, 2, 2, 3), "v3", "temp", Node, compress_level=1)
    assert [n["filename"] for n in names] == ["v3_00001_.png", "v3_00002_.png"] and names[0]["type"] == "temp"
    with Image.open(dirs / "temp" / "v3_00001_.png") as f:
        assert dict(f.text) == {"prompt": '{"1": {}}'}
    settings.configure(disable_metadata=True)
    image_savers.save_images(torch.rand(1, 2, 2, 3), "v3", "temp", Node)
    with Image.open(dirs / "temp" / "v3_00003_.png") as f:
        assert dict(f.text) == {}


def test_custom_packs_can_subclass_core_image_nodes(dirs):
    import nodes
    from nodes import PreviewImage, SaveImage  # noqa: F401  (as custom packs write it)

    class SaveWithSuffix(nodes.SaveImage):
        def __init__(self):
            super().__init__()
            self.prefix_append = "_pack"
    item = SaveWithSuffix().save_images(torch.rand(1, 2, 2, 3), "x")["ui"]["images"][0]
    assert item["filename"] == "x_pack_00001_.png" and (dirs / "output" / item["filename"]).is_file()
    with pytest.raises(AttributeError):
        nodes.NoSuchNode
