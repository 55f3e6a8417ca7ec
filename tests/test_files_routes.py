"""POST /upload/image, POST /upload/mask, GET /view and /view_metadata over HTTP (API.md §5),
including every refusal: names or subfolders that leave their folder, symlinks pointing
outside, decompression bombs, malformed forms and oversized bodies."""
import hashlib
import io
import json
import os
import struct
import zlib

import aiohttp
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors.torch import save_file


def png_bytes(color=(255, 0, 0, 255), size=(4, 4), text=None, mode="RGBA"):
    buf = io.BytesIO()
    info = PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    Image.new(mode, size, color).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def bomb_png(width=20000, height=20000) -> bytes:
    """A valid PNG header claiming 400 Mpixels (over PIL's decompression-bomb limit)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) \
        + chunk(b"IEND", b"")


def form(data: bytes, name="a.png", **fields):
    f = aiohttp.FormData()
    f.add_field("image", data, filename=name, content_type="image/png")
    for k, v in fields.items():
        f.add_field(k, v)
    return f


async def upload(client, data, name="a.png", path="/upload/image", **fields):
    r = await client.post(path, data=form(data, name, **fields))
    return r.status, (await r.json() if r.content_type == "application/json" else await r.text())


# -- /upload/image -------------------------------------------------------------------

async def test_upload_stores_file_and_answers_name_subfolder_type(client, base_dir):
    data = png_bytes()
    status, body = await upload(client, data)
    assert status == 200 and body == {"name": "a.png", "subfolder": "", "type": "input"}
    assert (base_dir / "input" / "a.png").read_bytes() == data


async def test_upload_api_prefix_and_types(client, base_dir):
    status, body = await upload(client, png_bytes(), path="/api/upload/image", type="temp", subfolder="sub/dir")
    assert status == 200 and body == {"name": "a.png", "subfolder": "sub/dir", "type": "temp"}
    assert (base_dir / "temp" / "sub" / "dir" / "a.png").exists()
    status, body = await upload(client, png_bytes(), type="output")
    assert body["type"] == "output" and (base_dir / "output" / "a.png").exists()


async def test_upload_duplicate_naming_compares_hashes(client, base_dir):
    red, green, blue = png_bytes((255, 0, 0, 255)), png_bytes((0, 255, 0, 255)), png_bytes((0, 0, 255, 255))
    assert (await upload(client, red))[1]["name"] == "a.png"
    # identical bytes: the existing name is reused and nothing new is written
    assert (await upload(client, red))[1]["name"] == "a.png"
    assert sorted(os.listdir(base_dir / "input")) == ["a.png"]
    assert (await upload(client, green))[1]["name"] == "a (1).png"
    assert (await upload(client, blue))[1]["name"] == "a (2).png"
    # green again matches "a (1).png" while walking the candidates
    assert (await upload(client, green))[1]["name"] == "a (1).png"
    assert (base_dir / "input" / "a (2).png").read_bytes() == blue


@pytest.mark.parametrize("flag", ["true", "1"])
async def test_upload_overwrite(client, base_dir, flag):
    await upload(client, png_bytes((1, 2, 3, 255)))
    new = png_bytes((9, 9, 9, 255))
    status, body = await upload(client, new, overwrite=flag)
    assert status == 200 and body["name"] == "a.png"
    assert (base_dir / "input" / "a.png").read_bytes() == new


async def test_upload_overwrite_other_values_keep_both(client):
    await upload(client, png_bytes((1, 2, 3, 255)))
    assert (await upload(client, png_bytes((4, 5, 6, 255)), overwrite="yes"))[1]["name"] == "a (1).png"


async def test_upload_hashes_with_default_hashing_function(aiohttp_client, make_args, base_dir, monkeypatch):
    from server.app import create_app
    used = []
    real_new = hashlib.new
    monkeypatch.setattr(hashlib, "new", lambda name, *a, **k: used.append(name) or real_new(name, *a, **k))
    c = await aiohttp_client(create_app(make_args("--default-hashing-function", "md5")))
    await upload(c, png_bytes((1, 1, 1, 255)))
    await upload(c, png_bytes((2, 2, 2, 255)))
    assert used and set(used) == {"md5"}


async def test_upload_non_image_media_is_kept(client, base_dir):
    status, body = await upload(client, b"\x00\x00\x00\x18ftypmp42 not really a video", name="clip.mp4")
    assert status == 200 and body["name"] == "clip.mp4"
    assert (base_dir / "input" / "clip.mp4").exists()


def raw_multipart(filename: str, data: bytes) -> tuple[bytes, dict]:
    """A form whose file name is sent verbatim (aiohttp's FormData would percent-encode it)."""
    body = (b'--zz\r\nContent-Disposition: form-data; name="image"; filename="' + filename.encode() + b'"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--zz--\r\n")
    return body, {"Content-Type": "multipart/form-data; boundary=zz"}


async def test_upload_name_with_folder_part_stays_inside(client, base_dir):
    body, headers = raw_multipart("nested/x.png", png_bytes())
    r = await client.post("/upload/image", data=body, headers=headers)
    assert r.status == 200 and (await r.json())["name"] == "nested/x.png"
    assert (base_dir / "input" / "nested" / "x.png").exists()


@pytest.mark.parametrize("fields,name", [
    ({"subfolder": "../../etc"}, "a.png"),
    ({"subfolder": "/tmp"}, "a.png"),
    ({"type": "nowhere"}, "a.png"),
    ({}, "."),
])
async def test_upload_refusals_are_400(client, base_dir, fields, name):
    status, body = await upload(client, png_bytes(), name=name, **fields)
    assert status == 400 and "error" in body


@pytest.mark.parametrize("name", ["../escape.png", "sub/../../escape.png", "a\x00.png", "..", "sub/.."])
async def test_upload_refuses_names_leaving_the_folder(client, base_dir, name):
    body, headers = raw_multipart(name, png_bytes())
    r = await client.post("/upload/image", data=body, headers=headers)
    assert r.status == 400 and "error" in await r.json()
    assert not (base_dir / "escape.png").exists()


async def test_upload_absolute_name_lands_inside(client, base_dir, tmp_path_factory):
    target = tmp_path_factory.mktemp("abs") / "escape.png"
    body, headers = raw_multipart(str(target), png_bytes())
    r = await client.post("/upload/image", data=body, headers=headers)
    assert not target.exists()
    if r.status == 200:  # aiohttp drops the leading "/": the file is stored under input/
        assert (base_dir / "input" / (await r.json())["name"]).is_file()
    else:
        assert r.status == 400


async def test_upload_refuses_symlinked_subfolder_pointing_outside(client, base_dir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    os.symlink(outside, base_dir / "input" / "link")
    status, _ = await upload(client, png_bytes(), subfolder="link")
    assert status == 400 and os.listdir(outside) == []
    # a symlink that stays inside is fine
    (base_dir / "input" / "real").mkdir()
    os.symlink(base_dir / "input" / "real", base_dir / "input" / "inner")
    assert (await upload(client, png_bytes(), subfolder="inner"))[0] == 200
    assert (base_dir / "input" / "real" / "a.png").exists()


async def test_upload_malformed_forms_are_400(client):
    f = aiohttp.FormData()
    f.add_field("other", "x")
    f.add_field("type", "input")
    r = await client.post("/upload/image", data=f)
    assert r.status == 400 and "image" in (await r.json())["error"]
    # "image" as a plain field, not a file
    r = await client.post("/upload/image", data={"image": "not a file"})
    assert r.status == 400
    r = await client.post("/upload/image", data=b"not multipart",
                          headers={"Content-Type": "multipart/form-data; boundary=zz"})
    assert r.status == 400 and "multipart" in (await r.json())["error"]
    r = await client.post("/upload/image", data=b"junk", headers={"Content-Type": "multipart/form-data"})
    assert r.status == 400
    r = await client.post("/upload/image")
    assert r.status == 400
    body = (b'--zz\r\nContent-Disposition: form-data; name="image"; filename=""\r\n'
            b'Content-Type: image/png\r\n\r\nxx\r\n--zz--\r\n')
    r = await client.post("/upload/image", data=body, headers={"Content-Type": "multipart/form-data; boundary=zz"})
    assert r.status == 400


async def test_upload_decompression_bomb_is_400(client, base_dir):
    status, body = await upload(client, bomb_png(), name="bomb.png")
    assert status == 400 and "too large" in body["error"]
    assert not (base_dir / "input" / "bomb.png").exists()


async def test_upload_over_max_upload_size_is_413(aiohttp_client, make_args, base_dir):
    from server.app import create_app
    c = await aiohttp_client(create_app(make_args("--max-upload-size", "0.01")))  # 10 486 bytes
    r = await c.post("/upload/image", data=form(os.urandom(20000)))
    assert r.status == 413
    assert os.listdir(base_dir / "input") == []
    assert (await upload(c, png_bytes()))[0] == 200  # small uploads still work


async def test_get_upload_is_not_a_route(client):
    assert (await client.get("/upload/image")).status in (404, 405)
    assert (await client.put("/upload/image")).status == 405


# -- /upload/mask --------------------------------------------------------------------

def mask_form(mask: bytes, name="m.png", ref=None, **fields):
    fields.setdefault("type", "input")
    fields.setdefault("subfolder", "clipspace")
    if ref is not None:
        fields["original_ref"] = ref if isinstance(ref, str) else json.dumps(ref)
    return form(mask, name, **fields)


@pytest.fixture
def original(base_dir):
    (base_dir / "input" / "clipspace").mkdir()
    path = base_dir / "input" / "clipspace" / "orig.png"
    path.write_bytes(png_bytes((200, 100, 50, 255), size=(6, 4), text={"prompt": '{"1": {}}', "workflow": "{}"}))
    return path


REF = {"filename": "orig.png", "type": "input", "subfolder": "clipspace"}


async def test_mask_composites_alpha_and_keeps_text_chunks(client, base_dir, original):
    r = await client.post("/upload/mask", data=mask_form(png_bytes((0, 0, 0, 30), size=(6, 4)), ref=REF))
    assert r.status == 200 and await r.json() == {"name": "m.png", "subfolder": "clipspace", "type": "input"}
    with Image.open(base_dir / "input" / "clipspace" / "m.png") as out:
        assert out.format == "PNG" and out.mode == "RGBA" and out.size == (6, 4)
        assert out.getpixel((1, 1)) == (200, 100, 50, 30)
        assert out.text == {"prompt": '{"1": {}}', "workflow": "{}"}


async def test_mask_annotated_reference_and_default_output_type(client, base_dir):
    (base_dir / "output" / "o.png").write_bytes(png_bytes((1, 2, 3, 255)))
    # no type: the original is looked up in output/
    r = await client.post("/api/upload/mask", data=mask_form(png_bytes((0, 0, 0, 7)), ref={"filename": "o.png"}))
    assert r.status == 200
    with Image.open(base_dir / "input" / "clipspace" / "m.png") as out:
        assert out.getpixel((0, 0)) == (1, 2, 3, 7)
    (base_dir / "temp" / "t.png").write_bytes(png_bytes((4, 5, 6, 255)))
    ref = {"filename": "t.png [temp]", "type": "output"}  # the annotation wins over type
    r = await client.post("/upload/mask", data=mask_form(png_bytes((0, 0, 0, 9)), "n.png", ref=ref))
    assert r.status == 200
    with Image.open(base_dir / "input" / "clipspace" / "n.png") as out:
        assert out.getpixel((0, 0)) == (4, 5, 6, 9)


async def test_mask_of_other_size_is_resized(client, base_dir, original):
    r = await client.post("/upload/mask", data=mask_form(png_bytes((0, 0, 0, 99), size=(3, 2)), ref=REF))
    assert r.status == 200
    with Image.open(base_dir / "input" / "clipspace" / "m.png") as out:
        assert out.size == (6, 4) and out.getpixel((5, 3))[3] == 99


async def test_mask_reupload_gets_numbered_name(client, base_dir, original):
    mask = png_bytes((0, 0, 0, 30))
    assert (await (await client.post("/upload/mask", data=mask_form(mask, ref=REF))).json())["name"] == "m.png"
    # the stored file is the composite, so the same mask bytes differ from it
    assert (await (await client.post("/upload/mask", data=mask_form(mask, ref=REF))).json())["name"] == "m (1).png"
    r = await client.post("/upload/mask", data=mask_form(png_bytes((0, 0, 0, 1)), ref=REF, overwrite="true"))
    assert (await r.json())["name"] == "m.png"
    with Image.open(base_dir / "input" / "clipspace" / "m.png") as out:
        assert out.getpixel((0, 0))[3] == 1


async def test_mask_identical_existing_bytes_write_nothing(client, base_dir, original):
    mask = png_bytes((0, 0, 0, 30))
    (base_dir / "input" / "clipspace" / "m.png").write_bytes(mask)
    r = await client.post("/upload/mask", data=mask_form(mask, ref=REF))
    assert (await r.json())["name"] == "m.png"
    assert (base_dir / "input" / "clipspace" / "m.png").read_bytes() == mask


async def test_mask_accepts_the_seed_documents_typographic_quotes(client, base_dir, original):
    seed_ref = "{“filename”:”orig.png”,”type”:”input”,”subfolder”:”clipspace”}"
    r = await client.post("/upload/mask", data=mask_form(png_bytes((0, 0, 0, 5)), ref=seed_ref))
    assert r.status == 200 and (base_dir / "input" / "clipspace" / "m.png").exists()


@pytest.mark.parametrize("ref,status,word", [
    (None, 400, "original_ref"),
    ("{not json", 400, "JSON"),
    ('["orig.png"]', 400, "filename"),
    ({"filename": 5}, 400, "filename"),
    ({"filename": "orig.png", "subfolder": 3}, 400, "subfolder"),
    ({"filename": ""}, 400, "empty"),
    ({"filename": "../input/clipspace/orig.png", "type": "output"}, 400, ".."),
    ({"filename": "/etc/passwd"}, 400, "absolute"),
    ({"filename": "orig.png", "type": "bogus"}, 400, "type"),
    ({"filename": "orig.png", "type": "input", "subfolder": "../../"}, 403, "subfolder"),
    ({"filename": "nothere.png", "type": "input", "subfolder": "clipspace"}, 404, "not found"),
])
async def test_mask_refusals(client, base_dir, original, ref, status, word):
    r = await client.post("/upload/mask", data=mask_form(png_bytes(), ref=ref))
    assert r.status == status
    assert word in (await r.json())["error"]
    assert not (base_dir / "input" / "clipspace" / "m.png").exists()


async def test_mask_refuses_undecodable_and_bomb_masks(client, base_dir, original):
    r = await client.post("/upload/mask", data=mask_form(b"not an image", ref=REF))
    assert r.status == 400 and "decode" in (await r.json())["error"]
    r = await client.post("/upload/mask", data=mask_form(bomb_png(), ref=REF))
    assert r.status == 400 and "too large" in (await r.json())["error"]
    assert not (base_dir / "input" / "clipspace" / "m.png").exists()


async def test_mask_refuses_original_symlinked_outside(client, base_dir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("secret")
    (outside / "s.png").write_bytes(png_bytes())
    os.symlink(outside / "s.png", base_dir / "input" / "s.png")
    r = await client.post("/upload/mask", data=mask_form(png_bytes(), ref={"filename": "s.png", "type": "input"}))
    assert r.status == 403


# -- /view ---------------------------------------------------------------------------

@pytest.fixture
def picture(base_dir):
    (base_dir / "output" / "sub").mkdir()
    path = base_dir / "output" / "sub" / "p.png"
    path.write_bytes(png_bytes((10, 20, 30, 128), size=(5, 3)))
    return path


async def test_view_raw_file(client, picture):
    r = await client.get("/view?filename=p.png&subfolder=sub&type=output&rand=0.5")
    assert r.status == 200 and r.headers["Content-Type"] == "image/png"
    assert r.headers["Content-Disposition"] == 'filename="p.png"'
    assert "Cache-Control" not in r.headers  # /view?... has no image suffix
    assert await r.read() == picture.read_bytes()


async def test_view_defaults_to_output_and_drops_folder_part_of_name(client, base_dir, picture):
    (base_dir / "output" / "top.png").write_bytes(png_bytes())
    assert (await client.get("/view?filename=top.png")).status == 200
    # only the basename of filename counts: the directory part is dropped
    assert (await client.get("/view?filename=other/p.png&subfolder=sub")).status == 200
    assert (await client.get("/view?filename=sub/p.png")).status == 404


async def test_view_types_and_annotations(client, base_dir):
    for kind in ("input", "temp"):
        (base_dir / kind / f"{kind}.png").write_bytes(png_bytes())
        assert (await client.get(f"/view?filename={kind}.png&type={kind}")).status == 200
        assert (await client.get(f"/api/view?filename={kind}.png [{kind}]&type=output")).status == 200
    assert (await client.get("/view?filename=input.png")).status == 404  # default type is output


async def test_view_channels(client, picture):
    r = await client.get("/view?filename=p.png&subfolder=sub&channel=rgb")
    assert r.headers["Content-Type"] == "image/png"
    rgb = Image.open(io.BytesIO(await r.read()))
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (10, 20, 30)
    a = Image.open(io.BytesIO(await (await client.get("/view?filename=p.png&subfolder=sub&channel=a")).read()))
    assert a.mode == "RGBA" and a.getpixel((0, 0)) == (0, 0, 0, 128)
    r = await client.get("/view?filename=p.png&subfolder=sub&channel=rgba")
    assert await r.read() == picture.read_bytes()


async def test_view_alpha_of_opaque_image_is_255(client, base_dir):
    (base_dir / "output" / "rgb.png").write_bytes(png_bytes((1, 2, 3), mode="RGB"))
    a = Image.open(io.BytesIO(await (await client.get("/view?filename=rgb.png&channel=a")).read()))
    assert a.getpixel((0, 0)) == (0, 0, 0, 255)


async def test_view_previews(client, picture):
    r = await client.get("/view?filename=p.png&subfolder=sub&preview=jpeg;50")
    assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg"
    assert r.headers["Content-Disposition"] == 'filename="p.png"'
    assert Image.open(io.BytesIO(await r.read())).format == "JPEG"
    r = await client.get("/view?filename=p.png&subfolder=sub&preview=webp")
    img = Image.open(io.BytesIO(await r.read()))
    assert r.headers["Content-Type"] == "image/webp" and img.format == "WEBP" and img.mode == "RGBA"
    # unknown formats, and any channel with an "a", fall back to webp
    assert (await client.get("/view?filename=p.png&subfolder=sub&preview=gif;80")).headers["Content-Type"] == "image/webp"
    r = await client.get("/view?filename=p.png&subfolder=sub&preview=jpeg;80&channel=a")
    assert r.headers["Content-Type"] == "image/webp"
    r = await client.get("/view?filename=p.png&subfolder=sub&preview=webp;90&channel=rgb")
    assert Image.open(io.BytesIO(await r.read())).mode == "RGB"


async def test_view_preview_of_non_image_serves_the_file(client, base_dir):
    (base_dir / "output" / "a.txt").write_text("hello")
    r = await client.get("/view?filename=a.txt&preview=webp;50")
    assert r.status == 200 and await r.text() == "hello"


@pytest.mark.parametrize("name,ctype", [
    ("x.html", "application/octet-stream"), ("x.htm", "application/octet-stream"),
    ("x.js", "application/octet-stream"), ("x.css", "application/octet-stream"),
    ("x.xhtml", "application/octet-stream"), ("x.webp", "image/webp"),
    ("x.unknownext", "application/octet-stream"), ("x.json", "application/json"),
])
async def test_view_content_types(client, base_dir, name, ctype):
    (base_dir / "output" / name).write_text("<script>alert(1)</script>")
    r = await client.get(f"/view?filename={name}")
    assert r.status == 200 and r.headers["Content-Type"] == ctype


async def test_view_head_and_range(client, picture):
    r = await client.head("/view?filename=p.png&subfolder=sub")
    assert r.status == 200 and int(r.headers["Content-Length"]) == picture.stat().st_size
    r = await client.get("/view?filename=p.png&subfolder=sub", headers={"Range": "bytes=0-3"})
    assert r.status == 206 and await r.read() == picture.read_bytes()[:4]


@pytest.mark.parametrize("query,status", [
    ("", 404),
    ("?type=output", 404),
    ("?filename=%20[output]", 400),
    ("?filename=../secret.png", 400),
    ("?filename=a..b.png", 400),
    ("?filename=/etc/passwd", 400),
    ("?filename=x.png&type=bogus", 400),
    ("?filename=x.png&subfolder=../../", 403),
    ("?filename=x.png&subfolder=/etc", 403),
    ("?filename=passwd&subfolder=../../../../../../etc", 403),
    ("?filename=nothere.png", 404),
    ("?filename=sub&subfolder=", 404),
    ("?filename=a%00.png", 400),
])
async def test_view_refusals(client, picture, query, status):
    r = await client.get("/view" + query)
    assert r.status == status


async def test_view_refuses_symlinks_pointing_outside(client, base_dir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.png").write_bytes(png_bytes())
    os.symlink(outside, base_dir / "output" / "linkdir")
    os.symlink(outside / "secret.png", base_dir / "output" / "linked.png")
    assert (await client.get("/view?filename=secret.png&subfolder=linkdir")).status == 403
    assert (await client.get("/view?filename=linked.png")).status == 403


async def test_view_is_get_only(client):
    assert (await client.post("/view?filename=x.png")).status == 405


# -- /view_metadata ------------------------------------------------------------------

@pytest.fixture
def loras(base_dir):
    folder = base_dir / "models" / "loras"
    (folder / "sub").mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(folder / "l.safetensors"), metadata={"ss_network_dim": "32", "a": "b"})
    save_file({"w": torch.zeros(2)}, str(folder / "sub" / "n.safetensors"), metadata={"x": "1"})
    save_file({"w": torch.zeros(2)}, str(folder / "plain.safetensors"))
    (folder / "huge.safetensors").write_bytes(struct.pack("<Q", 2 * 1024 * 1024) + b"{}")
    (folder / "corrupt.safetensors").write_bytes(struct.pack("<Q", 5) + b"{nope")
    (folder / "list.safetensors").write_bytes(struct.pack("<Q", 2) + b"[]")
    return folder


async def test_view_metadata_get(client, loras):
    r = await client.get("/view_metadata/loras?filename=l.safetensors")
    assert r.status == 200 and await r.json() == {"ss_network_dim": "32", "a": "b"}
    r = await client.get("/api/view_metadata/loras?filename=sub/n.safetensors")
    assert r.status == 200 and await r.json() == {"x": "1"}
    assert (await client.head("/view_metadata/loras?filename=l.safetensors")).status == 200


async def test_view_metadata_accepts_legacy_folder_names(client, base_dir):
    (base_dir / "models" / "unet").mkdir()
    save_file({"w": torch.zeros(1)}, str(base_dir / "models" / "unet" / "u.safetensors"), metadata={"k": "v"})
    assert await (await client.get("/view_metadata/unet?filename=u.safetensors")).json() == {"k": "v"}
    assert await (await client.get("/view_metadata/diffusion_models?filename=u.safetensors")).json() == {"k": "v"}


async def test_view_metadata_post_as_the_seed_document_uses_it(client, loras):
    expected = {"ss_network_dim": "32", "a": "b"}
    r = await client.post("/view_metadata/loras", data=json.dumps({"filename": "l.safetensors"}))
    assert r.status == 200 and await r.json() == expected
    r = await client.post("/view_metadata/loras?filename=l.safetensors")
    assert r.status == 200 and await r.json() == expected
    r = await client.post("/api/view_metadata/loras", data={"filename": "l.safetensors"})
    assert r.status == 200 and await r.json() == expected
    assert (await client.post("/view_metadata/loras", data="{broken")).status == 404
    assert (await client.post("/view_metadata/loras", data=json.dumps(["l.safetensors"]))).status == 404
    assert (await client.post("/view_metadata/loras")).status == 404


@pytest.mark.parametrize("url", [
    "/view_metadata/loras",
    "/view_metadata/loras?filename=plain.safetensors",
    "/view_metadata/loras?filename=l.ckpt",
    "/view_metadata/loras?filename=missing.safetensors",
    "/view_metadata/nope?filename=l.safetensors",
    "/view_metadata/loras?filename=huge.safetensors",
    "/view_metadata/loras?filename=corrupt.safetensors",
    "/view_metadata/loras?filename=list.safetensors",
    "/view_metadata/checkpoints?filename=../loras/l.safetensors",
    "/view_metadata/loras?filename=/etc/x.safetensors",
])
async def test_view_metadata_404s(client, loras, url):
    r = await client.get(url)
    assert r.status == 404


async def test_view_metadata_follows_symlinked_model_files(client, base_dir, tmp_path_factory):
    """Model folders often link to weights stored elsewhere; the name is checked, not the target."""
    outside = tmp_path_factory.mktemp("shared_models")
    save_file({"w": torch.zeros(1)}, str(outside / "s.safetensors"), metadata={"shared": "1"})
    (base_dir / "models" / "loras").mkdir(parents=True, exist_ok=True)
    os.symlink(outside / "s.safetensors", base_dir / "models" / "loras" / "s.safetensors")
    assert await (await client.get("/view_metadata/loras?filename=s.safetensors")).json() == {"shared": "1"}
