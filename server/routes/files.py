"""Files: POST /upload/image, POST /upload/mask, GET /view, GET|POST /view_metadata/{folder}
(API.md §5). Names and subfolders never leave the input/output/temp folders (no `..`, no
absolute paths, no symlinks pointing outside); bad input is a 4xx with a reason."""
from __future__ import annotations

import hashlib
import io
import json
import mimetypes
import os
import urllib.parse
import warnings

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from models import folders
from server.app_keys import ARGS

routes = web.RouteTableDef()

# Served as downloads, never rendered: a file written by a node must not run script in the UI's origin.
FORCED_BINARY = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript",
                 "application/javascript", "text/css"}
SAFETENSORS_HEADER_LIMIT = 1024 * 1024


class FileRefused(Exception):
    """A request naming a file it may not use; `status` is the HTTP answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _refuse(e: FileRefused) -> web.Response:
    return web.json_response({"error": str(e)}, status=e.status)


# -- images --------------------------------------------------------------------------

def open_image(source) -> Image.Image:
    """PIL's open, refusing decompression bombs (over PIL's own pixel limit) with a FileRefused.
    Undecodable data raises UnidentifiedImageError/OSError for the caller to judge."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(source)
    except Image.DecompressionBombError as e:
        raise FileRefused(400, f"image is too large to decode: {e}")


def _check_not_bomb(file) -> None:
    """Uploads may be any media; those that are images must decode to a sane size."""
    try:
        with open_image(file):
            pass
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        pass  # not an image PIL knows (video, audio, ...): stored as is, like ComfyUI
    finally:
        file.seek(0)


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


# -- uploads -------------------------------------------------------------------------

def _digest(file_or_path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    if isinstance(file_or_path, str):
        with open(file_or_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    else:
        file_or_path.seek(0)
        for chunk in iter(lambda: file_or_path.read(1 << 20), b""):
            h.update(chunk)
        file_or_path.seek(0)
    return h.hexdigest()


class Upload:
    """The validated fields of an upload form and where its file goes."""

    def __init__(self, form, default_hashing: str):
        image = form.get("image")
        if not isinstance(image, web.FileField):
            raise FileRefused(400, "the form needs a file in the 'image' field")
        if not image.filename:
            raise FileRefused(400, "the uploaded file has no name")
        if "\x00" in image.filename:
            raise FileRefused(400, "invalid file name")
        self.file = image.file
        self.filename = image.filename
        self.type = form.get("type") or "input"
        self.subfolder = form.get("subfolder", "")
        if not isinstance(self.type, str) or not isinstance(self.subfolder, str):
            raise FileRefused(400, "'type' and 'subfolder' must be plain form fields")
        root = folders.get_directory_by_type(self.type)
        if root is None:
            raise FileRefused(400, f"unknown type {self.type!r}; expected input, output or temp")
        self.root = root
        self.folder = os.path.join(root, os.path.normpath(self.subfolder))
        overwrite = form.get("overwrite")
        self.overwrite = overwrite in ("true", "1")
        self.algorithm = default_hashing
        self._check(os.path.abspath(os.path.join(self.folder, self.filename)))

    def _check(self, path: str) -> None:
        if not folders.is_inside(path, self.root) or os.path.realpath(path) == os.path.realpath(self.root):
            raise FileRefused(400, "the file name or subfolder leaves the upload folder")
        if os.path.isdir(path):
            raise FileRefused(400, "the file name names a folder")

    def place(self) -> tuple[str, bool]:
        """(name to report, whether to write): the sent name, or with overwrite off the first of
        'x.png', 'x (1).png', ... that is free or already holds identical bytes (then nothing
        is written)."""
        os.makedirs(os.path.dirname(os.path.abspath(os.path.join(self.folder, self.filename))), exist_ok=True)
        name = self.filename
        if self.overwrite:
            return name, True
        stem, ext = os.path.splitext(self.filename)
        digest = None
        i = 1
        while True:
            path = os.path.abspath(os.path.join(self.folder, name))
            self._check(path)
            if not os.path.lexists(path):
                return name, True
            if os.path.isfile(path):
                digest = digest or _digest(self.file, self.algorithm)
                if _digest(path, self.algorithm) == digest:
                    return name, False
            name = f"{stem} ({i}){ext}"
            i += 1

    def path(self, name: str) -> str:
        return os.path.abspath(os.path.join(self.folder, name))

    def response(self, name: str) -> web.Response:
        return web.json_response({"name": name, "subfolder": self.subfolder, "type": self.type})


async def _read_form(request: web.Request):
    """The multipart form; file parts are spooled to temp files and the whole body is held to
    --max-upload-size (aiohttp raises 413). A body that is not a form is a 400."""
    try:
        return await request.post()
    except web.HTTPException:
        raise
    except (ValueError, AssertionError, HttpProcessingError) as e:  # HttpProcessingError: bad part headers
        raise FileRefused(400, f"invalid multipart body: {getattr(e, 'message', None) or e}")


@routes.post("/upload/image")
async def upload_image(request: web.Request) -> web.Response:
    try:
        up = Upload(await _read_form(request), request.app[ARGS].default_hashing_function)
        _check_not_bomb(up.file)
        name, write = up.place()
    except FileRefused as e:
        return _refuse(e)
    if write:
        with open(up.path(name), "wb") as out:
            up.file.seek(0)
            for chunk in iter(lambda: up.file.read(1 << 20), b""):
                out.write(chunk)
    return up.response(name)


def parse_original_ref(text) -> dict:
    """original_ref is JSON; the seed document's example writes it with typographic quotes
    ({“filename”:”x.png”}), which is accepted when it becomes valid JSON with plain ones."""
    if not isinstance(text, str):
        raise FileRefused(400, "original_ref must be a form field holding JSON")
    try:
        ref = json.loads(text)
    except ValueError:
        plain = text
        for quote in "“”„‟″":
            plain = plain.replace(quote, '"')
        try:
            ref = json.loads(plain)
        except ValueError as e:
            raise FileRefused(400, f'original_ref is not valid JSON ({e}); expected '
                                   '{"filename": "x.png", "type": "input", "subfolder": ""}')
    if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str):
        raise FileRefused(400, "original_ref must be a JSON object with a string 'filename'")
    for key in ("type", "subfolder"):
        if key in ref and not isinstance(ref[key], str):
            raise FileRefused(400, f"original_ref.{key} must be a string")
    return ref


def resolve_original(ref: dict) -> str:
    """Absolute path of the image an original_ref names (annotation beats 'type', which
    defaults to output)."""
    filename, annotated = folders.annotated_filepath(ref["filename"])
    if not filename:
        raise FileRefused(400, "original_ref.filename is empty")
    if filename.startswith("/") or ".." in filename or "\x00" in filename:
        raise FileRefused(400, "original_ref.filename may not be absolute or contain '..'")
    root = annotated or folders.get_directory_by_type(ref.get("type", "output"))
    if root is None:
        raise FileRefused(400, f"unknown original_ref.type {ref.get('type')!r}")
    folder = os.path.join(root, ref.get("subfolder") or "")
    if not folders.is_inside(folder, root):
        raise FileRefused(403, "original_ref.subfolder leaves its folder")
    path = os.path.join(folder, filename)
    if not folders.is_inside(path, root):
        raise FileRefused(403, "original_ref names a file outside its folder")
    if not os.path.isfile(path):
        raise FileRefused(404, f"original image not found: {ref['filename']}")
    return path


def composite_mask(original_path: str, mask_file, target: str) -> None:
    """The original image with its alpha replaced by the mask's alpha (resized to fit),
    keeping the original's PNG text chunks (workflow, prompt)."""
    try:
        with open_image(original_path) as original:
            info = PngImagePlugin.PngInfo()
            for key, value in getattr(original, "text", {}).items():
                info.add_text(key, value)
            rgba = original.convert("RGBA")
        with open_image(mask_file) as mask:
            alpha = mask.convert("RGBA").getchannel("A")
    except FileRefused:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise FileRefused(400, f"could not decode the image: {e}")
    if alpha.size != rgba.size:
        alpha = alpha.resize(rgba.size, Image.Resampling.BILINEAR)
    rgba.putalpha(alpha)
    fmt = Image.registered_extensions().get(os.path.splitext(target)[1].lower(), "PNG")
    rgba.save(target, format=fmt, compress_level=4, pnginfo=info)


@routes.post("/upload/mask")
async def upload_mask(request: web.Request) -> web.Response:
    """Stores original-with-the-mask's-alpha, not the uploaded bytes. Differs from ComfyUI,
    which answers 200 (writing nothing) for a missing or refused original: here that is a
    400/403/404 saying why."""
    try:
        form = await _read_form(request)
        up = Upload(form, request.app[ARGS].default_hashing_function)
        if "original_ref" not in form:
            raise FileRefused(400, "original_ref is required")
        original = resolve_original(parse_original_ref(form["original_ref"]))
        name, write = up.place()
        if write:
            composite_mask(original, up.file, up.path(name))
    except FileRefused as e:
        return _refuse(e)
    return up.response(name)


# -- /view ---------------------------------------------------------------------------

def _disposition(name: str) -> str:
    return 'filename="{}"'.format(name.replace("\\", "\\\\").replace('"', '\\"'))


def _encode(path: str, preview: str | None, channel: str, headers: dict) -> web.Response | None:
    """The re-encoded image for preview=/channel=, or None when the file is no image."""
    try:
        img = open_image(path)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    with img:
        try:
            img.load()
        except (OSError, ValueError, SyntaxError):
            return None
        buf = io.BytesIO()
        if preview is not None:
            parts = preview.split(";")
            fmt = parts[0] if parts[0] in ("webp", "jpeg") and "a" not in channel else "webp"
            quality = int(parts[-1]) if parts[-1].isdigit() else 90
            if fmt == "jpeg" or channel == "rgb":
                img = img.convert("RGB")
            elif img.mode not in ("RGB", "RGBA"):
                img = img.convert("RGBA" if _has_alpha(img) else "RGB")
            img.save(buf, format=fmt, quality=min(quality, 100))
            return web.Response(body=buf.getvalue(), content_type=f"image/{fmt}", headers=headers)
        if channel == "rgb":
            img.convert("RGB").save(buf, format="PNG")
        else:  # "a": black RGB carrying the source alpha (opaque when it has none)
            alpha = img.convert("RGBA").getchannel("A") if _has_alpha(img) else Image.new("L", img.size, 255)
            out = Image.new("RGBA", img.size, (0, 0, 0, 0))
            out.putalpha(alpha)
            out.save(buf, format="PNG")
        return web.Response(body=buf.getvalue(), content_type="image/png", headers=headers)


def resolve_view(query) -> str:
    """The file /view serves (API.md §5.3 order of checks), or FileRefused."""
    filename, annotated = folders.annotated_filepath(query["filename"])
    if not filename:
        raise FileRefused(400, "empty filename")
    if filename.startswith("/") or ".." in filename or "\x00" in filename:
        raise FileRefused(400, "filename may not be absolute or contain '..'")
    root = annotated or folders.get_directory_by_type(query.get("type", "output"))
    if root is None:
        raise FileRefused(400, f"unknown type {query.get('type')!r}; expected input, output or temp")
    folder = root
    if "subfolder" in query:
        subfolder = query["subfolder"]
        if "\x00" in subfolder:
            raise FileRefused(400, "invalid subfolder")
        folder = os.path.join(root, subfolder)
        if not folders.is_inside(folder, root):
            raise FileRefused(403, "subfolder leaves its folder")
    path = os.path.join(folder, os.path.basename(filename))
    if not os.path.isfile(path):
        raise FileRefused(404, "file not found")
    if not folders.is_inside(path, root):
        raise FileRefused(403, "file links outside its folder")
    return path


@routes.get("/view")
async def view(request: web.Request) -> web.StreamResponse:
    q = request.rel_url.query
    if "filename" not in q:
        return web.Response(status=404)
    try:
        path = resolve_view(q)
    except FileRefused as e:
        return web.Response(status=e.status, text=str(e))
    name = os.path.basename(path)
    headers = {"Content-Disposition": _disposition(name)}
    preview, channel = q.get("preview"), q.get("channel", "")  # "" (absent) means rgba
    if preview is not None or channel in ("rgb", "a"):
        encoded = _encode(path, preview, channel, headers)
        if encoded is not None:
            return encoded
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if name.lower().endswith(".webp"):
        content_type = "image/webp"
    if content_type in FORCED_BINARY:
        content_type = "application/octet-stream"  # forces a download
    headers["Content-Type"] = content_type
    return web.FileResponse(path, headers=headers)


# -- /view_metadata ------------------------------------------------------------------

def safetensors_metadata(path: str):
    """The __metadata__ of a safetensors file, or None (header over 1 MiB, unreadable, absent)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if size > SAFETENSORS_HEADER_LIMIT:
                return None
            header = json.loads(f.read(size))
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    return header.get("__metadata__")


def _view_metadata(folder: str, filename) -> web.Response:
    if not isinstance(filename, str) or not filename.endswith(".safetensors") or "\x00" in filename:
        return web.Response(status=404)
    path = folders.get_full_path(folder, filename)
    meta = safetensors_metadata(path) if path else None
    if meta is None:
        return web.Response(status=404)
    return web.json_response(meta)


@routes.get("/view_metadata/{folder_name}")
async def view_metadata(request: web.Request) -> web.Response:
    return _view_metadata(request.match_info["folder_name"], request.rel_url.query.get("filename"))


@routes.post("/view_metadata/{folder_name}")
async def view_metadata_post(request: web.Request) -> web.Response:
    """The seed document's POST form (ComfyUI 0.8.0 has GET only): the file name from the
    query, else a JSON body {"filename": ...}, else a form field."""
    filename = request.rel_url.query.get("filename")
    if filename is None and request.can_read_body:
        text = await request.text()
        try:
            body = json.loads(text) if text.strip() else {}
        except ValueError:
            body = {k: v[0] for k, v in urllib.parse.parse_qs(text).items()}
        if isinstance(body, dict):
            filename = body.get("filename")
    return _view_metadata(request.match_info["folder_name"], filename)
