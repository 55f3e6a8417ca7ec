"""Users, settings, user data, system, model listings, middlewares and internal routes over HTTP."""
import json
import os

from safetensors.torch import save_file
import torch


async def test_users_and_settings(client, base_dir):
    r = await client.get("/users")
    assert await r.json() == {"storage": "server", "migrated": False}
    assert await (await client.get("/api/settings")).json() == {}
    assert (await client.post("/settings/Comfy.InstalledVersion", data=json.dumps("1.35.9"))).status == 200
    assert (await client.post("/settings", data=json.dumps({"a": 1, "b": [2]}))).status == 200
    assert await (await client.get("/settings")).json() == {"Comfy.InstalledVersion": "1.35.9", "a": 1, "b": [2]}
    assert await (await client.get("/settings/a")).json() == 1
    assert await (await client.get("/settings/missing")).json() is None
    assert (await client.post("/settings", data="{bad")).status == 400
    assert await (await client.get("/users")).json() == {"storage": "server", "migrated": True}


async def test_multi_user(aiohttp_client, make_args):
    from server.app import create_app
    c = await aiohttp_client(create_app(make_args("--multi-user")))
    uid = await (await c.post("/users", data=json.dumps({"username": "Al ice"}))).json()
    assert uid.startswith("Al-ice_")
    dup = await c.post("/users", data=json.dumps({"username": "Al ice"}))
    assert dup.status == 400 and await dup.json() == {"error": "Duplicate username."}
    assert (await c.post("/users", data=json.dumps({"username": "__sys"}))).status == 400
    assert (await c.get("/settings", headers={"Comfy-User": "nobody"})).status == 401
    assert (await c.get("/settings", headers={"Comfy-User": uid})).status == 200
    listing = await (await c.get("/users")).json()
    assert listing["users"] == {uid: "Al ice"}


async def test_userdata_crud(client):
    assert (await client.get("/userdata?dir=workflows")).status == 404
    r = await client.post("/userdata/workflows%2Fa.json", data=b'{"x":1}')
    assert r.status == 200 and await r.json() == "workflows/a.json"
    r = await client.post("/userdata/workflows%2Fa.json?overwrite=false", data=b"{}")
    assert r.status == 409
    assert await (await client.get("/userdata/workflows%2Fa.json")).read() == b'{"x":1}'
    assert await (await client.get("/userdata?dir=workflows")).json() == ["a.json"]
    full = await (await client.get("/userdata?dir=workflows&full_info=true")).json()
    assert full[0]["path"] == "a.json" and full[0]["size"] == 7
    assert await (await client.get("/userdata?dir=workflows&split=true")).json() == [["a.json", "a.json"]]
    r = await client.post("/userdata/workflows%2Fa.json/move/workflows%2Fb.json")
    assert await r.json() == "workflows/b.json"
    v2 = await (await client.get("/v2/userdata")).json()
    assert v2[0]["type"] == "directory" and v2[1]["path"] == "workflows/b.json"
    assert (await client.delete("/userdata/workflows%2Fb.json")).status == 204
    assert (await client.delete("/userdata/workflows%2Fb.json")).status == 404
    assert (await client.get("/userdata/..%2F..%2Fetc%2Fpasswd")).status == 403
    assert (await client.get("/userdata?dir=..%2F..")).status == 403
    assert (await client.get("/userdata")).status == 400


async def test_system_stats_shape(client):
    stats = await (await client.get("/system_stats")).json()
    assert list(stats) == ["system", "devices"]
    sysinfo = stats["system"]
    assert sysinfo["os"] == "linux" and sysinfo["comfyui_version"] == "0.8.0"
    assert sysinfo["ram_total"] > sysinfo["ram_free"] > 0 and isinstance(sysinfo["argv"], list)
    dev = stats["devices"][0]
    assert dev["type"] == "cpu" and dev["index"] is None and dev["vram_total"] == sysinfo["ram_total"]
    assert (await client.head("/system_stats")).status == 200


async def test_model_listings(client, base_dir):
    ckpt = base_dir / "models" / "checkpoints"
    (ckpt / "sub").mkdir(parents=True)
    save_file({"w": torch.zeros(1)}, str(ckpt / "sub" / "m.safetensors"))
    (ckpt / "notes.txt").write_text("x")
    (base_dir / "models" / "embeddings").mkdir()
    (base_dir / "models" / "embeddings" / "neg.pt").write_bytes(b"x")
    kinds = await (await client.get("/models")).json()
    assert kinds[:4] == ["checkpoints", "configs", "loras", "vae"] and "custom_nodes" in kinds
    assert await (await client.get("/models/checkpoints")).json() == ["sub/m.safetensors"]
    assert (await client.get("/models/unet")).status == 404
    assert await (await client.get("/embeddings")).json() == ["neg"]
    exp = await (await client.get("/experiment/models")).json()
    assert {"name": "checkpoints", "folders": [str(ckpt)]} in exp
    files = await (await client.get("/experiment/models/checkpoints")).json()
    assert files[0]["name"] == "sub/m.safetensors" and files[0]["pathIndex"] == 0
    assert (await client.get("/experiment/models/preview/checkpoints/0/sub/m.safetensors")).status == 404


async def test_origin_check_and_cors(client, aiohttp_client, make_args):
    r = await client.get("/queue", headers={"Origin": "http://evil.example", "Host": "127.0.0.1:8188"})
    assert r.status == 403
    r = await client.get("/queue", headers={"Origin": "http://127.0.0.1:8188", "Host": "127.0.0.1:8188"})
    assert r.status == 200
    assert (await client.options("/prompt")).status == 200
    from server.app import create_app
    c = await aiohttp_client(create_app(make_args("--enable-cors-header")))
    r = await c.get("/queue", headers={"Origin": "http://evil.example", "Host": "127.0.0.1:8188"})
    assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "*"


async def test_internal_routes(client, base_dir):
    (base_dir / "output" / "a.png").write_bytes(b"1")
    assert await (await client.get("/internal/files/output")).json() == ["a.png"]
    r = await client.get("/internal/files/bogus")
    assert r.status == 400 and await r.json() == {"error": "Invalid directory type"}
    paths = await (await client.get("/internal/folder_paths")).json()
    assert paths["checkpoints"] == [str(base_dir / "models" / "checkpoints")]
    raw = await (await client.get("/internal/logs/raw")).json()
    assert "entries" in raw and "size" in raw
    assert isinstance(await (await client.get("/internal/logs")).json(), str)
    assert (await client.get("/api/internal/logs")).status == 404  # no /api twin
    assert (await client.patch("/internal/logs/subscribe", data=json.dumps({"clientId": "x", "enabled": True}))).status == 200


async def test_unknown_paths_and_methods(client):
    assert (await client.get("/no/such/route")).status == 404
    assert (await client.post("/view")).status == 405
    assert (await client.post("/prompt", data="{not json")).status == 400
