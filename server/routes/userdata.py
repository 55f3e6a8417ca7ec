"""/users, /settings, /userdata and /v2/userdata (API.md §7)."""
from __future__ import annotations

import json
import os
import shutil
from urllib import parse

from aiohttp import web

from models import folders
from server.app_keys import ARGS
from server.routes._common import BadRequest, bad_request, read_json
from server.users import UnknownUser, UserManager

routes = web.RouteTableDef()
USERS = web.AppKey("users", UserManager)


def manager(request) -> UserManager:
    app = request.app
    if USERS not in app:
        app[USERS] = UserManager(app[ARGS].multi_user)
    return app[USERS]


def _file_info(path: str, root: str) -> dict:
    return {"path": os.path.relpath(path, root).replace(os.sep, "/"), "size": os.path.getsize(path),
            "modified": os.path.getmtime(path), "created": os.path.getctime(path)}


# -- users ---------------------------------------------------------------------------

@routes.get("/users")
async def get_users(request):
    m = manager(request)
    if m.multi_user:
        return web.json_response({"storage": "server", "users": m.users})
    return web.json_response({"storage": "server",
                              "migrated": os.path.exists(os.path.join(folders.state().user, "default"))})


@routes.post("/users")
async def post_users(request):
    try:
        body = await read_json(request)
    except BadRequest as e:
        return bad_request(str(e))
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
    return manager(request).user_path(request, "comfy.settings.json")


def _load_settings(path) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_settings(path, data):
    with open(path, "w") as f:
        json.dump(data, f, indent=4)


@routes.get("/settings")
async def get_settings(request):
    try:
        return web.json_response(_load_settings(_settings_path(request)))
    except UnknownUser:
        return web.Response(status=401)


@routes.get("/settings/{id}")
async def get_setting(request):
    try:
        return web.json_response(_load_settings(_settings_path(request)).get(request.match_info["id"]))
    except UnknownUser:
        return web.Response(status=401)


@routes.post("/settings")
async def post_settings(request):
    try:
        path = _settings_path(request)
        body = await read_json(request)
    except UnknownUser:
        return web.Response(status=401)
    except BadRequest as e:
        return bad_request(str(e))
    data = _load_settings(path)
    data.update(body)
    _save_settings(path, data)
    return web.Response(status=200)


@routes.post("/settings/{id}")
async def post_setting(request):
    try:
        path = _settings_path(request)
        value = await read_json(request, kind=None)
    except UnknownUser:
        return web.Response(status=401)
    except BadRequest as e:
        return bad_request(str(e))
    data = _load_settings(path)
    data[request.match_info["id"]] = value
    _save_settings(path, data)
    return web.Response(status=200)


# -- userdata ------------------------------------------------------------------------

def _user_file(request, name_param="file"):
    name = request.match_info.get(name_param, "")
    if not name:
        raise web.HTTPBadRequest(text="file not provided")
    try:
        path = manager(request).user_path(request, name)
    except UnknownUser:
        raise web.HTTPForbidden(text="unknown user")
    if path is None:
        raise web.HTTPForbidden(text="invalid path")
    return path


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
    files = []
    for dirpath, dirnames, filenames in os.walk(path):
        for fn in sorted(filenames):
            files.append(os.path.join(dirpath, fn))
        if not recurse:
            break
    if full_info:
        return web.json_response([_file_info(f, path) for f in files])
    rel = [os.path.relpath(f, path).replace(os.sep, "/") for f in files]
    if split:
        return web.json_response([[r] + r.split("/") for r in rel])
    return web.json_response(rel)


@routes.get("/v2/userdata")
async def list_userdata_v2(request):
    sub = parse.unquote(request.rel_url.query.get("path", ""))
    try:
        root = manager(request).user_root(request)
    except UnknownUser:
        return web.Response(status=403, text="Forbidden")
    target = os.path.abspath(os.path.join(root, sub))
    if os.path.commonpath((root, target)) != root:
        return web.Response(status=400, text="Invalid path")
    if not os.path.exists(target):
        return web.json_response([]) if not sub else web.Response(status=404, text="Path not found")
    if not os.path.isdir(target):
        return web.Response(status=400, text="Path is not a directory")
    dirs, files = [], []
    for dirpath, dirnames, filenames in os.walk(target):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            dirs.append({"name": d, "path": os.path.relpath(full, root).replace(os.sep, "/"), "type": "directory"})
        for fn in filenames:
            full = os.path.join(dirpath, fn)
            st = os.stat(full)
            files.append({"name": fn, "path": os.path.relpath(full, root).replace(os.sep, "/"), "type": "file",
                          "size": st.st_size, "modified": st.st_mtime})
    dirs.sort(key=lambda e: e["name"].lower())
    files.sort(key=lambda e: e["name"].lower())
    return web.json_response(dirs + files)


@routes.get("/userdata/{file}")
async def get_userdata(request):
    path = _user_file(request)
    if not os.path.isfile(path):
        return web.Response(status=404)
    return web.FileResponse(path)


@routes.post("/userdata/{file}")
async def post_userdata(request):
    path = _user_file(request)
    overwrite = request.rel_url.query.get("overwrite", "true") != "false"
    full_info = request.rel_url.query.get("full_info", "false").lower() == "true"
    if not overwrite and os.path.exists(path):
        return web.Response(status=409, text="File already exists")
    body = await request.read()
    try:
        with open(path, "wb") as f:
            f.write(body)
    except OSError as e:
        return web.Response(status=400, reason="Invalid filename", text=str(e))
    root = manager(request).user_root(request)
    if full_info:
        return web.json_response(_file_info(path, root))
    return web.json_response(os.path.relpath(path, root))


@routes.delete("/userdata/{file}")
async def delete_userdata(request):
    path = _user_file(request)
    if not os.path.exists(path):
        return web.Response(status=404)
    os.remove(path)
    return web.Response(status=204)


@routes.post("/userdata/{file}/move/{dest}")
async def move_userdata(request):
    source = _user_file(request, "file")
    dest = _user_file(request, "dest")
    if not os.path.exists(source):
        return web.Response(status=404)
    overwrite = request.rel_url.query.get("overwrite", "true") != "false"
    full_info = request.rel_url.query.get("full_info", "false").lower() == "true"
    if not overwrite and os.path.exists(dest):
        return web.Response(status=409, text="File already exists")
    shutil.move(source, dest)
    root = manager(request).user_root(request)
    if full_info:
        return web.json_response(_file_info(dest, root))
    return web.json_response(os.path.relpath(dest, root))
