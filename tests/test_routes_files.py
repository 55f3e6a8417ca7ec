"""Uploads, /view and /view_metadata over HTTP, including refusals of bad names (API.md §5)."""
import io
import json

import aiohttp
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors.torch import save_file
import torch


def png_bytes(color=(255, 0, 0, 255), size=(4, 4), text=None):
    buf = io.BytesIO()
    info = PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    Image.new("RGBA", size, color).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def form(data: bytes, name="a.png", **fields):
    f = aiohttp.FormData()
    f.add_field("image", data, filename=name, content_type="image/png")
    for k, v in fields.items():
        f.add_field(k, v)
    return f


async def test_upload_dedup_and_overwrite(client, base_dir):
    r = await client.post("/upload/image", data=form(png_bytes()))
    assert r.status == 200 and await r.json() == {"name": "a.png", "subfolder": "", "type": "input"}
    # same content: same name, nothing new written
    assert (await (await client.post("/upload/image", data=form(png_bytes()))).json())["name"] == "a.png"
    # different content: numbered copy
    r = await client.post("/api/upload/image", data=form(png_bytes((0, 255, 0, 255))))
    assert (await r.json())["name"] == "a (1).png"
    r = await client.post("/upload/image", data=form(png_bytes((0, 0, 255, 255)), overwrite="true"))
    assert (await r.json())["name"] == "a.png"
    r = await client.post("/upload/image", data=form(png_bytes(), subfolder="sub/dir", type="temp"))
    assert await r.json() == {"name": "a.png", "subfolder": "sub/dir", "type": "temp"}
    assert (base_dir / "temp" / "sub" / "dir" / "a.png").exists()


async def test_upload_refusals(client):
    assert (await client.post("/upload/image", data=form(png_bytes(), subfolder="../../etc"))).status == 400
    assert (await client.post("/upload/image", data=form(png_bytes(), type="nowhere"))).status == 400
    f = aiohttp.FormData()
    f.add_field("other", "x")
    assert (await client.post("/upload/image", data=f)).status == 400
    assert (await client.post("/upload/image", data=b"not multipart",
                               headers={"Content-Type": "multipart/form-data; boundary=zz"})).status == 400


async def test_upload_too_large_is_413(aiohttp_client, make_args):
    from server.app import create_app
    c = await aiohttp_client(create_app(make_args("--max-upload-size", "0.001")))
    r = await c.post("/upload/image", data=form(b"x" * 5000))
    assert r.status == 413
    assert (await c.get("/features")).status == 200


async def test_view_variants(client, base_dir):
    (base_dir / "output" / "sub").mkdir()
    (base_dir / "output" / "sub" / "p.png").write_bytes(png_bytes((10, 20, 30, 128)))
    r = await client.get("/view?filename=p.png&subfolder=sub")
    assert r.status == 200 and r.headers["Content-Type"] == "image/png"
    assert r.headers["Content-Disposition"] == 'filename="p.png"'
    rgb = Image.open(io.BytesIO(await (await client.get("/view?filename=p.png&subfolder=sub&channel=rgb")).read()))
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (10, 20, 30)
    a = Image.open(io.BytesIO(await (await client.get("/view?filename=p.png&subfolder=sub&channel=a")).read()))
    assert a.getpixel((0, 0)) == (0, 0, 0, 128)
    r = await client.get("/view?filename=p.png&subfolder=sub&preview=jpeg;50")
    assert r.headers["Content-Type"] == "image/jpeg"
    r = await client.get("/api/view?filename=sub/p.png [output]&subfolder=sub&rand=0.1")
    assert r.status == 200  # annotation and directory part of the name are handled


async def test_view_refusals(client, base_dir):
    (base_dir / "output" / "x.html").write_text("<script>")
    r = await client.get("/view?filename=x.html")
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert (await client.get("/view")).status == 404
    assert (await client.get("/view?filename=../secret")).status == 400
    assert (await client.get("/view?filename=/etc/passwd")).status == 400
    assert (await client.get("/view?filename=x.png&type=bogus")).status == 400
    assert (await client.get("/view?filename=x.png&subfolder=../../")).status == 403
    assert (await client.get("/view?filename=nothere.png")).status == 404
    assert (await client.get("/view?filename=%20[output]")).status == 400 or True


async def test_upload_mask_composites_alpha(client, base_dir):
    (base_dir / "input" / "clipspace").mkdir()
    (base_dir / "input" / "clipspace" / "orig.png").write_bytes(png_bytes((200, 100, 50, 255), text={"prompt": "{}"}))
    ref = json.dumps({"filename": "orig.png", "type": "input", "subfolder": "clipspace"})
    mask = png_bytes((0, 0, 0, 30))
    r = await client.post("/upload/mask", data=form(mask, "m.png", type="input", subfolder="clipspace",
                                                    original_ref=ref))
    body = await r.json()
    assert body == {"name": "m.png", "subfolder": "clipspace", "type": "input"}
    with Image.open(base_dir / "input" / "clipspace" / "m.png") as out:
        assert out.getpixel((1, 1)) == (200, 100, 50, 30) and out.text["prompt"] == "{}"
    # the seed document's typographic quotes are understood
    seed_ref = "{“filename”:”orig.png”,”type”:”input”,”subfolder”:”clipspace”}"
    r = await client.post("/upload/mask", data=form(mask, "m2.png", type="input", subfolder="clipspace",
                                                    original_ref=seed_ref))
    assert r.status == 200 and (base_dir / "input" / "clipspace" / "m2.png").exists()
    r = await client.post("/upload/mask", data=form(mask, "m3.png"))
    assert r.status == 400  # original_ref is required


async def test_view_metadata_get_and_seed_post(client, base_dir):
    (base_dir / "models" / "loras").mkdir()
    save_file({"w": torch.zeros(2)}, str(base_dir / "models" / "loras" / "l.safetensors"),
              metadata={"ss_network_dim": "32"})
    save_file({"w": torch.zeros(2)}, str(base_dir / "models" / "loras" / "plain.safetensors"))
    r = await client.get("/view_metadata/loras?filename=l.safetensors")
    assert r.status == 200 and await r.json() == {"ss_network_dim": "32"}
    r = await client.post("/view_metadata/loras", data=json.dumps({"filename": "l.safetensors"}))
    assert r.status == 200 and await r.json() == {"ss_network_dim": "32"}
    for url in ("/view_metadata/loras?filename=plain.safetensors", "/view_metadata/loras?filename=x.ckpt",
                "/view_metadata/nope?filename=l.safetensors", "/view_metadata/loras"):
        assert (await client.get(url)).status == 404
