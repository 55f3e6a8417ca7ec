"""Files: POST /upload/image, POST /upload/mask, GET /view, GET|POST /view_metadata/{folder}
(API.md §5). Names and subfolders never leave the input/output/temp folders."""
from __future__ import annotations

import hashlib
import io
import json
import mimetypes
import os

from aiohttp import web
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

from models import folders
from server.app_keys import ARGS
from server.routes._common import bad_request

routes = web.RouteTableDef()

FORCED_BINARY = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}
Image.MAX_IMAGE_PIXELS = 4 * 16384 * 16384  # refuse decompression bombs beyond 1 Gpixel


def _hash_file(path_or_bytes, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    if isinstance(path_or_bytes, (bytes, bytearray)):
        h.update(path_or_bytes)
    else:
        with open(path_or_bytes, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class _Upload:
    def __init__(self, fields: dict, file_name: str | None, data: bytes | None):
        self.fields, self.file_name, self.data = fields, file_name, data


async def _read_upload(request: web.Request) -> _Upload:
    fields, file_name, data = {}, None, None
    reader = await request.multipart()
    async for part in reader:
        if part.name == "image":
            file_name = part.filename
            data = await part.read(decode=False)
        elif part.name:
            fields[part.name] = (await part.read(decode=True)).decode("utf-8", "replace")
    return _Upload(fields, file_name, data)


def _target_dir(upload_type: str, subfolder: str) -> str | None:
    root = folders.get_directory_by_type(upload_type or "input")
    if root is None:
        return None
    target = os.path.abspath(os.path.join(root, os.path.normpath(subfolder)))
    return target if folders.is_inside(target, root) else None


def _free_name(target_dir: str, name: str, data: bytes, overwrite: bool, algorithm: str) -> tuple[str, bool]:
    """(final name, whether to write): identical content reuses the name; else 'x (1).ext'..."""
    path = os.path.join(target_dir, name)
    if overwrite or not os.path.exists(path):
        return name, True
    digest = _hash_file(data, algorithm)
    stem, ext = os.path.splitext(name)
    i = 1
    candidate = name
    while os.path.exists(os.path.join(target_dir, candidate)):
        if _hash_file(os.path.join(target_dir, candidate), algorithm) == digest:
            return candidate, False
        candidate = f"{stem} ({i}){ext}"
        i += 1
    return candidate, True


async def _upload(request: web.Request, mask: bool) -> web.Response:
    try:
        up = await _read_upload(request)
    except (ValueError, AssertionError) as e:  # malformed or non-multipart body
        return bad_request(f"invalid multipart body: {e}")
    if up.data is None or not up.file_name:
        return bad_request("no image file in the 'image' field")
    upload_type = up.fields.get("type", "input") or "input"
    subfolder = up.fields.get("subfolder", "")
    if folders.get_directory_by_type(upload_type) is None:
        return bad_request(f"unknown type {upload_type!r}; expected input, output or temp")
    target = _target_dir(upload_type, subfolder)
    name = os.path.basename(up.file_name)
    if target is None or not name or name in (".", ".."):
        return bad_request("invalid subfolder or file name")
    overwrite = up.fields.get("overwrite", "").lower() in ("true", "1")
    algorithm = request.app[ARGS].default_hashing_function
    os.makedirs(target, exist_ok=True)
    if mask:
        return await _store_mask(request, up, target, name, overwrite, algorithm, subfolder, upload_type)
    try:
        Image.open(io.BytesIO(up.data)).verify()  # also refuses decompression bombs
    except Image.DecompressionBombError:
        return bad_request("image is too large to decode")
    except Exception:
        pass  # non-image uploads (videos, audio) are allowed as in ComfyUI
    final, write = _free_name(target, name, up.data, overwrite, algorithm)
    if write:
        with open(os.path.join(target, final), "wb") as f:
            f.write(up.data)
    return web.json_response({"name": final, "subfolder": subfolder, "type": upload_type})


def _parse_ref(text: str) -> dict:
    try:
        return json.loads(text)
    except ValueError:
        # the seed document writes the JSON with typographic quotes
        return json.loads(text.replace("“", '"').replace("”", '"'))


async def _store_mask(request, up, target, name, overwrite, algorithm, subfolder, upload_type):
    if "original_ref" not in up.fields:
        return bad_request("original_ref is required")
    try:
        ref = _parse_ref(up.fields["original_ref"])
        if not isinstance(ref, dict) or "filename" not in ref:
            raise ValueError("original_ref needs a filename")
    except ValueError as e:
        return bad_request(f"original_ref is not valid JSON: {e}")
    final, _ = _free_name(target, name, up.data, overwrite, algorithm)
    filename, annotated_dir = folders.annotated_filepath(ref["filename"])
    base = annotated_dir or folders.get_directory_by_type(ref.get("type", "output"))
    if base is None or filename.startswith("/") or ".." in filename:
        return web.json_response({"name": final, "subfolder": subfolder, "type": upload_type})
    source_dir = os.path.abspath(os.path.join(base, os.path.normpath(ref.get("subfolder", "") or "")))
    source = os.path.join(source_dir, filename)
    if not folders.is_inside(source, base) or not os.path.isfile(source):
        # ComfyUI quirk kept: the name is returned even though nothing is written
        return web.json_response({"name": final, "subfolder": subfolder, "type": upload_type})
    try:
        with Image.open(source) as original:
            info = PngInfo()
            for key, value in getattr(original, "text", {}).items():
                info.add_text(key, value)
            rgba = original.convert("RGBA")
        with Image.open(io.BytesIO(up.data)) as mask_image:
            alpha = mask_image.convert("RGBA").getchannel("A")
    except Exception as e:
        return bad_request(f"could not read images: {e}")
    rgba.putalpha(alpha.resize(rgba.size) if alpha.size != rgba.size else alpha)
    rgba.save(os.path.join(target, final), pnginfo=info, compress_level=4)
    return web.json_response({"name": final, "subfolder": subfolder, "type": upload_type})


@routes.post("/upload/image")
async def upload_image(request):
    return await _upload(request, mask=False)


@routes.post("/upload/mask")
async def upload_mask(request):
    return await _upload(request, mask=True)


@routes.get("/view")
async def view(request: web.Request) -> web.StreamResponse:
    q = request.rel_url.query
    if "filename" not in q:
        return web.Response(status=404)
    filename, annotated_dir = folders.annotated_filepath(q["filename"])
    if not filename:
        return web.Response(status=400)
    if filename.startswith("/") or ".." in filename:
        return web.Response(status=400)
    base = annotated_dir or folders.get_directory_by_type(q.get("type", "output"))
    if base is None:
        return web.Response(status=400)
    directory = base
    if q.get("subfolder"):
        directory = os.path.abspath(os.path.join(base, q["subfolder"]))
        if not folders.is_inside(directory, base):
            return web.Response(status=403)
    name = os.path.basename(filename)
    path = os.path.join(directory, name)
    if not os.path.isfile(path) or not folders.is_inside(path, base):
        return web.Response(status=404)
    headers = {"Content-Disposition": f'filename="{name}"'}
    preview, channel = q.get("preview"), q.get("channel", "")
    if preview or channel in ("rgb", "a"):
        try:
            with Image.open(path) as img:
                img.load()
                return _encoded(img, preview, channel, headers)
        except Exception:
            pass  # not an image: fall through to the raw file
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if name.lower().endswith(".webp"):
        content_type = "image/webp"
    if content_type in FORCED_BINARY:
        content_type = "application/octet-stream"
    headers["Content-Type"] = content_type
    return web.FileResponse(path, headers=headers)


def _encoded(img: Image.Image, preview, channel, headers) -> web.Response:
    buf = io.BytesIO()
    if preview:
        parts = preview.split(";")
        fmt = parts[0] if parts[0] in ("webp", "jpeg") and "a" not in channel else "webp"
        quality = int(parts[-1]) if parts[-1].isdigit() else 90
        if fmt == "jpeg" or channel == "rgb":
            img = img.convert("RGB")
        img.save(buf, format=fmt, quality=quality)
        return web.Response(body=buf.getvalue(), content_type=f"image/{fmt}", headers=headers)
    if channel == "rgb":
        img.convert("RGB").save(buf, format="PNG")
    else:  # "a": black RGB carrying the source alpha
        alpha = img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255)
        out = Image.new("RGBA", img.size, (0, 0, 0, 255))
        out.putalpha(alpha)
        out.save(buf, format="PNG")
    return web.Response(body=buf.getvalue(), content_type="image/png", headers=headers)


async def _view_metadata(request: web.Request, filename: str | None) -> web.Response:
    folder = request.match_info["folder_name"]
    if not filename or not filename.endswith(".safetensors"):
        return web.Response(status=404)
    if folder not in folders.model_kinds():
        return web.Response(status=404)
    path = folders.get_full_path(folder, filename)
    if path is None:
        return web.Response(status=404)
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if size > 1024 * 1024:
                return web.Response(status=404)
            header = json.loads(f.read(size))
    except (OSError, ValueError):
        return web.Response(status=404)
    meta = header.get("__metadata__")
    if meta is None:
        return web.Response(status=404)
    return web.json_response(meta)


@routes.get("/view_metadata/{folder_name}")
async def view_metadata(request: web.Request) -> web.Response:
    return await _view_metadata(request, request.rel_url.query.get("filename"))


@routes.post("/view_metadata/{folder_name}")
async def view_metadata_post(request: web.Request) -> web.Response:
    """The seed document's form: filename from the query, a JSON body or a form."""
    filename = request.rel_url.query.get("filename")
    if filename is None and request.can_read_body:
        text = await request.text()
        try:
            body = json.loads(text) if text.strip() else {}
            filename = body.get("filename") if isinstance(body, dict) else None
        except ValueError:
            from urllib.parse import parse_qs
            filename = (parse_qs(text).get("filename") or [None])[0]
    return await _view_metadata(request, filename)
