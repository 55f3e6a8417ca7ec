"""/users, /settings, /userdata, /v2/userdata over HTTP (API.md §7), single- and multi-user,
including refusals of paths that leave the user's folder and of unknown or system users."""
import json
import os

import pytest


async def multi_user_client(aiohttp_client, make_args, *flags):
    from server.app import create_app
    return await aiohttp_client(create_app(make_args("--multi-user", *flags)))


async def add_user(c, name):
    r = await c.post("/users", data=json.dumps({"username": name}))
    assert r.status == 200
    return await r.json()


# -- users ---------------------------------------------------------------------------

async def test_single_user_users_reports_migration(client, base_dir):
    r = await client.get("/users")
    assert r.status == 200 and await r.json() == {"storage": "server", "migrated": False}
    assert (await client.post("/settings/x", data="1")).status == 200  # creates user/default
    assert await (await client.get("/api/users")).json() == {"storage": "server", "migrated": True}
    assert (await client.head("/users")).status == 200


async def test_multi_user_create_and_list(aiohttp_client, make_args, base_dir):
    c = await multi_user_client(aiohttp_client, make_args)
    assert await (await c.get("/users")).json() == {"storage": "server", "users": {}}
    uid = await add_user(c, "Al ice!")
    prefix, _, suffix = uid.partition("_")
    assert prefix == "Al-ice-" and len(suffix) == 36
    assert await (await c.get("/api/users")).json() == {"storage": "server", "users": {uid: "Al ice!"}}
    assert json.loads((base_dir / "user" / "users.json").read_text()) == {uid: "Al ice!"}
    # persisted: a new server on the same folder knows the user
    c2 = await multi_user_client(aiohttp_client, make_args)
    assert (await (await c2.get("/users")).json())["users"] == {uid: "Al ice!"}


@pytest.mark.parametrize("body,error", [
    ({"username": "Bob"}, "Duplicate username."),
    ({"username": "   "}, "username not provided"),
    ({"username": "__system"}, "System User prefix not allowed"),
    ({"username": "?__x"}, None),  # becomes "-__x_...": allowed
    ({"username": 5}, "username not provided"),
    ({}, "username not provided"),
])
async def test_multi_user_create_refusals(aiohttp_client, make_args, body, error):
    c = await multi_user_client(aiohttp_client, make_args)
    await add_user(c, "Bob")
    r = await c.post("/users", data=json.dumps(body))
    if error is None:
        assert r.status == 200
    else:
        assert r.status == 400 and await r.json() == {"error": error}


async def test_users_post_malformed_json_is_400(client):
    for data in ("{not json", "", "[1, 2]"):
        r = await client.post("/users", data=data)
        assert r.status == 400 and "error" in await r.json()


async def test_corrupt_users_file_starts_empty(aiohttp_client, make_args, base_dir):
    (base_dir / "user" / "users.json").write_text("{broken")
    c = await multi_user_client(aiohttp_client, make_args)
    assert await (await c.get("/users")).json() == {"storage": "server", "users": {}}


# -- settings ------------------------------------------------------------------------

async def test_settings_roundtrip(client, base_dir):
    assert await (await client.get("/api/settings")).json() == {}
    r = await client.post("/api/settings/Comfy.InstalledVersion", data=json.dumps("1.35.9"))
    assert r.status == 200 and await r.read() == b""
    assert (await client.post("/settings", data=json.dumps({"a": 1, "b": [2]}))).status == 200
    assert (await client.post("/settings", data=json.dumps({"a": 3}))).status == 200  # shallow merge
    expected = {"Comfy.InstalledVersion": "1.35.9", "a": 3, "b": [2]}
    assert await (await client.get("/settings")).json() == expected
    assert await (await client.get("/settings/a")).json() == 3
    assert await (await client.get("/settings/b")).json() == [2]
    r = await client.get("/settings/missing")
    assert r.status == 200 and await r.json() is None
    stored = (base_dir / "user" / "default" / "comfy.settings.json").read_text()
    assert json.loads(stored) == expected and "\n    " in stored  # indent=4, as ComfyUI writes it


async def test_setting_values_of_any_json_type(client):
    for value in (None, True, 1.5, "text", {"nested": [1, {"x": None}]}):
        assert (await client.post("/settings/k", data=json.dumps(value))).status == 200
        assert await (await client.get("/settings/k")).json() == value


async def test_settings_bad_bodies_are_400(client):
    for url, data in (("/settings", "{bad"), ("/settings", "[1]"), ("/settings", ""), ("/settings/x", "{bad"),
                      ("/settings/x", b"\xff\xfe")):
        r = await client.post(url, data=data)
        assert r.status == 400 and "error" in await r.json(), (url, data)
    assert await (await client.get("/settings")).json() == {}


async def test_corrupt_settings_file_reads_empty(client, base_dir):
    (base_dir / "user" / "default").mkdir(parents=True)
    (base_dir / "user" / "default" / "comfy.settings.json").write_text("{corrupt")
    assert await (await client.get("/settings")).json() == {}
    assert (await client.post("/settings/a", data="1")).status == 200
    assert await (await client.get("/settings")).json() == {"a": 1}


async def test_settings_methods(client):
    assert (await client.delete("/settings")).status == 405
    assert (await client.put("/settings/x", data="1")).status == 405
    assert (await client.head("/settings")).status == 200


async def test_multi_user_settings_are_per_user(aiohttp_client, make_args, base_dir):
    c = await multi_user_client(aiohttp_client, make_args)
    alice, bob = await add_user(c, "alice"), await add_user(c, "bob")
    await c.post("/settings/theme", data='"dark"', headers={"Comfy-User": alice})
    assert await (await c.get("/settings", headers={"Comfy-User": alice})).json() == {"theme": "dark"}
    assert await (await c.get("/settings", headers={"Comfy-User": bob})).json() == {}
    assert (base_dir / "user" / alice / "comfy.settings.json").exists()


@pytest.mark.parametrize("user", ["nobody", "__comfyd", "default"])
async def test_multi_user_unknown_users_get_401_on_settings(aiohttp_client, make_args, base_dir, user):
    c = await multi_user_client(aiohttp_client, make_args)
    headers = {"Comfy-User": user}
    assert (await c.get("/settings", headers=headers)).status == 401
    assert (await c.get("/settings/x", headers=headers)).status == 401
    assert (await c.post("/settings", data="{}", headers=headers)).status == 401
    assert (await c.post("/settings/x", data="1", headers=headers)).status == 401
    assert not (base_dir / "user" / "__comfyd" / "comfy.settings.json").exists()


async def test_single_user_ignores_the_user_header(client, base_dir):
    await client.post("/settings/a", data="1", headers={"Comfy-User": "__comfyd"})
    assert (base_dir / "user" / "default" / "comfy.settings.json").exists()
    assert not (base_dir / "user" / "__comfyd" / "comfy.settings.json").exists()


# -- userdata files ------------------------------------------------------------------

async def test_userdata_write_read_list_move_delete(client, base_dir):
    assert (await client.get("/api/userdata?dir=workflows&recurse=true&split=false&full_info=true")).status == 404
    r = await client.post("/userdata/workflows%2Fa.json", data=b'{"x":1}')
    assert r.status == 200 and await r.json() == "workflows/a.json"
    assert (base_dir / "user" / "default" / "workflows" / "a.json").read_bytes() == b'{"x":1}'
    r = await client.get("/api/userdata/workflows%2Fa.json")
    assert r.status == 200 and await r.read() == b'{"x":1}'
    assert await (await client.get("/userdata?dir=workflows")).json() == ["a.json"]
    r = await client.post("/userdata/workflows%2Fa.json/move/workflows%2Fb.json")
    assert r.status == 200 and await r.json() == "workflows/b.json"
    assert await (await client.get("/userdata?dir=workflows")).json() == ["b.json"]
    assert (await client.delete("/userdata/workflows%2Fb.json")).status == 204
    assert await (await client.get("/userdata?dir=workflows")).json() == []
    assert (await client.delete("/userdata/workflows%2Fb.json")).status == 404


async def test_userdata_overwrite_flag(client):
    assert (await client.post("/userdata/a.json", data=b"1")).status == 200
    r = await client.post("/userdata/a.json?overwrite=false", data=b"2")
    assert r.status == 409 and await r.text() == "File already exists"
    assert await (await client.get("/userdata/a.json")).read() == b"1"
    # only the exact string "false" disables overwriting
    assert (await client.post("/userdata/a.json?overwrite=False", data=b"3")).status == 200
    assert await (await client.get("/userdata/a.json")).read() == b"3"


async def test_userdata_full_info_responses(client):
    r = await client.post("/userdata/w%2Fa.json?full_info=true", data=b"12345")
    info = await r.json()
    assert list(info) == ["path", "size", "modified", "created"]
    assert info["path"] == "w/a.json" and info["size"] == 5 and isinstance(info["modified"], float)
    r = await client.post("/userdata/w%2Fa.json/move/w%2Fb.json?full_info=true")
    moved = await r.json()
    assert moved["path"] == "w/b.json" and moved["size"] == 5


async def test_userdata_move_refusals(client):
    await client.post("/userdata/a.json", data=b"a")
    await client.post("/userdata/b.json", data=b"b")
    assert (await client.post("/userdata/missing.json/move/c.json")).status == 404
    r = await client.post("/userdata/a.json/move/b.json?overwrite=false")
    assert r.status == 409
    assert (await client.post("/userdata/a.json/move/..%2F..%2Fescape.json")).status == 403
    assert (await client.post("/userdata/a.json/move/b.json")).status == 200  # overwrites by default
    assert await (await client.get("/userdata/b.json")).read() == b"a"


async def test_userdata_listing_options(client, base_dir):
    root = base_dir / "user" / "default" / "wf"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a.json").write_text("{}")
    (root / "sub" / "b.json").write_text("{}")
    (root / "sub" / "deep" / "c.json").write_text("{}")
    (root / ".hidden.json").write_text("{}")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("x")
    assert await (await client.get("/userdata?dir=wf")).json() == ["a.json"]
    assert sorted(await (await client.get("/userdata?dir=wf&recurse=true")).json()) == \
        ["a.json", "sub/b.json", "sub/deep/c.json"]
    split = await (await client.get("/userdata?dir=wf&recurse=true&split=true")).json()
    assert sorted(split) == [["a.json", "a.json"], ["sub/b.json", "sub", "b.json"],
                             ["sub/deep/c.json", "sub", "deep", "c.json"]]
    full = await (await client.get("/userdata?dir=wf&recurse=true&full_info=true&split=true")).json()
    assert sorted(f["path"] for f in full) == ["a.json", "sub/b.json", "sub/deep/c.json"]
    assert all(f["size"] == 2 for f in full)
    assert await (await client.get("/userdata?dir=wf%2Fsub")).json() == ["b.json"]


@pytest.mark.parametrize("url,status,text", [
    ("/userdata", 400, "Directory not provided"),
    ("/userdata?dir=", 400, "Directory not provided"),
    ("/userdata?dir=..%2F..", 403, "Invalid directory"),
    ("/userdata?dir=/etc", 403, "Invalid directory"),
    ("/userdata?dir=..%2F__comfyd", 403, "Invalid directory"),
    ("/userdata?dir=nothere", 404, "Directory not found"),
])
async def test_userdata_listing_refusals(client, url, status, text):
    r = await client.get(url)
    assert r.status == status and await r.text() == text


@pytest.mark.parametrize("name", [
    "..%2F..%2Fetc%2Fpasswd",
    "..%252F..%252Fetc%252Fpasswd",  # encoded twice: decoded again by the server
    "%2Fetc%2Fpasswd",
    "..%2Fusers.json",
    "..%2F__comfyd%2Fqueue.sqlite3",
])
async def test_userdata_files_outside_the_user_folder_are_403(client, base_dir, name):
    (base_dir / "user" / "users.json").write_text("{}")
    assert (await client.get(f"/userdata/{name}")).status == 403
    assert (await client.post(f"/userdata/{name}", data=b"x")).status == 403
    assert (await client.delete(f"/userdata/{name}")).status == 403
    assert (await client.post(f"/userdata/{name}/move/x.json")).status in (403, 404)
    assert (base_dir / "user" / "users.json").read_text() == "{}"


async def test_userdata_symlinks_out_of_the_user_folder_are_403(client, base_dir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.txt").write_text("secret")
    (base_dir / "user" / "default").mkdir(parents=True)
    os.symlink(outside, base_dir / "user" / "default" / "link")
    assert (await client.get("/userdata/link%2Fsecret.txt")).status == 403
    assert (await client.post("/userdata/link%2Fnew.txt", data=b"x")).status == 403
    assert (await client.get("/userdata?dir=link")).status == 403
    assert not (outside / "new.txt").exists()


async def test_userdata_file_errors(client, base_dir):
    assert (await client.get("/userdata/missing.json")).status == 404
    (base_dir / "user" / "default" / "folder").mkdir(parents=True)
    assert (await client.get("/userdata/folder")).status == 404
    r = await client.post("/userdata/folder", data=b"x")
    assert r.status == 400 and r.reason.startswith("Invalid filename")
    assert (await client.delete("/userdata/folder")).status == 400
    assert (base_dir / "user" / "default" / "folder").is_dir()


async def test_userdata_files_of_other_users_are_separate(aiohttp_client, make_args, base_dir):
    c = await multi_user_client(aiohttp_client, make_args)
    alice, bob = await add_user(c, "alice"), await add_user(c, "bob")
    await c.post("/userdata/a.json", data=b"alice's", headers={"Comfy-User": alice})
    assert (await c.get("/userdata/a.json", headers={"Comfy-User": bob})).status == 404
    r = await c.get(f"/userdata/..%2F{alice}%2Fa.json", headers={"Comfy-User": bob})
    assert r.status == 403
    for user in ("nobody", "__comfyd"):
        assert (await c.get("/userdata/a.json", headers={"Comfy-User": user})).status == 403
        assert (await c.get("/userdata?dir=x", headers={"Comfy-User": user})).status == 403


async def test_userdata_body_over_the_limit_is_413(aiohttp_client, make_args, base_dir):
    from server.app import create_app
    c = await aiohttp_client(create_app(make_args("--max-upload-size", "0.01")))
    r = await c.post("/userdata/big.json", data=b"x" * 20000)
    assert r.status == 413
    assert not (base_dir / "user" / "default" / "big.json").exists()
    assert (await c.post("/userdata/small.json", data=b"x" * 1000)).status == 200


# -- /v2/userdata --------------------------------------------------------------------

async def test_v2_listing(client, base_dir):
    assert await (await client.get("/v2/userdata")).json() == []  # no user folder yet
    root = base_dir / "user" / "default"
    (root / "Workflows" / "sub").mkdir(parents=True)
    (root / "b.json").write_text("12")
    (root / "Workflows" / "a.json").write_text("1")
    (root / "Workflows" / "sub" / "c.json").write_text("123")
    (root / "assets").mkdir()
    listing = await (await client.get("/api/v2/userdata")).json()
    dirs = [e for e in listing if e["type"] == "directory"]
    files = [e for e in listing if e["type"] == "file"]
    assert listing == dirs + files  # directories first
    assert [e["name"].lower() for e in dirs] == sorted(e["name"].lower() for e in dirs)
    assert [e["name"].lower() for e in files] == sorted(e["name"].lower() for e in files)
    assert {e["path"] for e in dirs} == {"Workflows", "Workflows/sub", "assets"}
    b = next(e for e in files if e["path"] == "b.json")
    assert set(b) == {"name", "path", "type", "size", "modified"} and b["size"] == 2
    assert set(dirs[0]) == {"name", "path", "type"}
    sub = await (await client.get("/v2/userdata?path=Workflows")).json()
    assert {e["path"] for e in sub} == {"Workflows/sub", "Workflows/a.json", "Workflows/sub/c.json"}
    assert {e["path"] for e in await (await client.get("/v2/userdata?path=Workflows%252Fsub")).json()} == \
        {"Workflows/sub/c.json"}


@pytest.mark.parametrize("query,status", [
    ("?path=missing", 404),
    ("?path=b.json", 400),
    ("?path=..%2F..", 400),
    ("?path=/etc", 400),
    ("?path=..%2F__comfyd", 400),
])
async def test_v2_refusals(client, base_dir, query, status):
    (base_dir / "user" / "default").mkdir(parents=True)
    (base_dir / "user" / "default" / "b.json").write_text("{}")
    assert (await client.get("/v2/userdata" + query)).status == status


async def test_v2_unknown_user_is_403(aiohttp_client, make_args):
    c = await multi_user_client(aiohttp_client, make_args)
    assert (await c.get("/v2/userdata", headers={"Comfy-User": "ghost"})).status == 403
    uid = await add_user(c, "real")
    assert await (await c.get("/v2/userdata", headers={"Comfy-User": uid})).json() == []
