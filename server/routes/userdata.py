"""/users, /settings, /userdata and /v2/userdata (API.md §7).

Unknown users: settings routes answer 401 and /v2/userdata 403 as ComfyUI does; the other
userdata routes answer 403 where ComfyUI fails with a 500."""
from __future__ import annotations

import json
import os
import shutil
from urllib import parse

from aiohttp import web

from server.app_keys import ARGS
from server.routes._common import bad_request, read_json
from server.users import UnknownUser, UserManager

routes = web.RouteTableDef()
USERS = web.AppKey("users", UserManager)
SETTINGS_FILE = "comfy.settings.json"


def init_app(app: web.Application) -> None:
    """Called by create_app before start-up: one user manager per app."""
    app[USERS] = UserManager(app[ARGS].multi_user)


def manager(request) -> UserManager:
    return request.app[USERS]


def _file_info(path: str, root: str) -> dict:
    st = os.stat(path)
    return {"path": os.path.relpath(path, root).replace(os.sep, "/"), "size": st.st_size,
            "modified": st.st_mtime, "created": st.st_ctime}


def _write_atomic(path: str, data: bytes) -> None:
    """Write via a temp file in the same folder, so a crash never leaves half a workflow."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# -- users ---------------------------------------------------------------------------

@routes.get("/users")
async def get_users(request):
    m = manager(request)
    if m.multi_user:
        return web.json_response({"storage": "server", "users": m.users})
    return web.json_response({"storage": "server", "migrated": os.path.exists(m.user_root(request))})


@routes.post("/users")
async def post_users(request):
    body = await read_json(request)
    m = manager(request)
    username = body.get("username")
    if not isinstance(username, str):
        return bad_request("username not provided")
    if username in m.users.values():
        return bad_request("Duplicate username.")
    try:
        return web.json_response(m.add_user(username))
    except ValueError as e:
        return bad_request(str(e))


# -- settings ------------------------------------------------------------------------

def _settings_path(request) -> str:
    try:
        return manager(request).user_path(request, SETTINGS_FILE)
    except UnknownUser:
        raise web.HTTPUnauthorized(text="Unknown user")


def _load_settings(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # corrupt settings read as empty, as in ComfyUI
    return data if isinstance(data, dict) else {}


def _save_settings(path: str, data: dict) -> None:
    _write_atomic(path, json.dumps(data, indent=4).encode("utf-8"))


@routes.get("/settings")
async def get_settings(request):
    return web.json_response(_load_settings(_settings_path(request)))


@routes.get("/settings/{id}")
async def get_setting(request):
    return web.json_response(_load_settings(_settings_path(request)).get(request.match_info["id"]))


@routes.post("/settings")
async def post_settings(request):
    path = _settings_path(request)
    body = await read_json(request)  # an object, merged shallowly
    data = _load_settings(path)
    data.update(body)
    _save_settings(path, data)
    return web.Response(status=200)


@routes.post("/settings/{id}")
async def post_setting(request):
    path = _settings_path(request)
    value = await read_json(request, kind=None)  # any JSON value
    data = _load_settings(path)
    data[request.match_info["id"]] = value
    _save_settings(path, data)
    return web.Response(status=200)


# -- userdata ------------------------------------------------------------------------

def _user_file(request, param: str = "file") -> str:
    """The user's file named by a path segment (sub-paths come as %2F), or an HTTP error."""
    name = request.match_info.get(param, "")
    if not name:
        raise web.HTTPBadRequest(text="File not provided")
    try:
        path = manager(request).user_path(request, name)
    except UnknownUser:
        raise web.HTTPForbidden(text="Unknown user")
    if path is None:
        raise web.HTTPForbidden(text="Invalid path")
    return path


def _flags(request) -> tuple[bool, bool]:
    q = request.rel_url.query
    return q.get("overwrite", "true") != "false", q.get("full_info", "false").lower() == "true"


def _written(request, path: str, full_info: bool) -> web.Response:
    root = manager(request).user_root(request)
    return web.json_response(_file_info(path, root) if full_info else os.path.relpath(path, root))


def _visible_files(root: str, recurse: bool) -> list[str]:
    """Files under root, skipping hidden files and folders (what a glob of * or **/* sees)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
        if not recurse:
            break
    return out


@routes.get("/userdata")
async def list_userdata(request):
    q = request.rel_url.query
    directory = q.get("dir", "")
    if not directory:
        return web.Response(status=400, text="Directory not provided")
    try:
        path = manager(request).user_path(request, directory, create_dir=False)
    except UnknownUser:
        return web.Response(status=403, text="Invalid directory")
    if path is None:
        return web.Response(status=403, text="Invalid directory")
    if not os.path.isdir(path):
        return web.Response(status=404, text="Directory not found")
    recurse = q.get("recurse", "").lower() == "true"
    full_info = q.get("full_info", "").lower() == "true"
    split = q.get("split", "").lower() == "true"
    files = _visible_files(path, recurse)
    if full_info:
        return web.json_response([_file_info(f, path) for f in files])
    rel = [os.path.relpath(f, path).replace(os.sep, "/") for f in files]
    if split:
        return web.json_response([[r] + r.split("/") for r in rel])
    return web.json_response(rel)


@routes.get("/v2/userdata")
async def list_userdata_v2(request):
    sub = parse.unquote(request.rel_url.query.get("path", ""))
    m = manager(request)
    try:
        root = m.user_path(request, None, create_dir=False)
        target = m.user_path(request, sub, create_dir=False) if sub else root
    except UnknownUser:
        return web.Response(status=403, text="Invalid user specified in request")
    if target is None:
        return web.Response(status=400, text="Invalid path requested")
    if not os.path.exists(target):
        if target == root:
            return web.json_response([])  # a new user has no folder yet
        return web.Response(status=404, text="Requested path not found")
    if not os.path.isdir(target):
        return web.Response(status=400, text="Requested path is not a directory")
    results = []
    try:
        for dirpath, dirnames, filenames in os.walk(target):
            for d in dirnames:
                full = os.path.join(dirpath, d)
                results.append({"name": d, "path": os.path.relpath(full, root).replace(os.sep, "/"),
                                "type": "directory"})
            for fn in filenames:
                full = os.path.join(dirpath, fn)
                entry = {"name": fn, "path": os.path.relpath(full, root).replace(os.sep, "/"), "type": "file"}
                try:
                    st = os.stat(full)
                    entry["size"], entry["modified"] = st.st_size, st.st_mtime
                except OSError:
                    pass  # listed without size, as ComfyUI does
                results.append(entry)
    except OSError:
        return web.Response(status=500, text="Error reading directory contents")
    results.sort(key=lambda e: (e["type"] != "directory", e["name"].lower()))
    return web.json_response(results)


@routes.get("/userdata/{file}")
async def get_userdata(request):
    path = _user_file(request)
    if not os.path.isfile(path):
        return web.Response(status=404, text="File not found")
    return web.FileResponse(path)


@routes.post("/userdata/{file}")
async def post_userdata(request):
    path = _user_file(request)
    overwrite, full_info = _flags(request)
    if not overwrite and os.path.exists(path):
        return web.Response(status=409, text="File already exists")
    body = await request.read()  # held to --max-upload-size (413)
    try:
        _write_atomic(path, body)
    except OSError as e:
        return web.Response(status=400, reason="Invalid filename. Please avoid special characters like :\\/*?\"<>|",
                            text=f"Cannot write the file: {e.strerror}")
    return _written(request, path, full_info)


@routes.delete("/userdata/{file}")
async def delete_userdata(request):
    path = _user_file(request)
    if not os.path.lexists(path):
        return web.Response(status=404, text="File not found")
    if os.path.isdir(path):
        return web.Response(status=400, text="Not a file")
    os.remove(path)
    return web.Response(status=204)


@routes.post("/userdata/{file}/move/{dest}")
async def move_userdata(request):
    source = _user_file(request, "file")
    if not os.path.exists(source):
        return web.Response(status=404, text="File not found")
    dest = _user_file(request, "dest")
    overwrite, full_info = _flags(request)
    if not overwrite and os.path.exists(dest):
        return web.Response(status=409, text="File already exists")
    try:
        shutil.move(source, dest)
    except OSError as e:
        return web.Response(status=400, text=f"Cannot move the file: {e.strerror or e}")
    return _written(request, dest, full_info)
