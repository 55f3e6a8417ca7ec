"""Middlewares over HTTP (API.md §1.3): cache headers, the origin check, CORS, CSP, gzip,
request-size limits (413) and malformed requests answered with 400 instead of 500."""
import json
import logging

import aiohttp
import pytest

from server import middleware


async def app_client(aiohttp_client, make_args, *flags):
    from server.app import create_app
    return await aiohttp_client(create_app(make_args(*flags)))


# -- Cache-Control -------------------------------------------------------------------

@pytest.fixture
def web_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    (root / "index.html").write_text("<html></html>")
    (root / "app.js").write_text("1")
    (root / "style.css").write_text("a{}")
    (root / "pic.PNG").write_bytes(b"png")
    (root / "photo.webp").write_bytes(b"webp")
    (root / "data.json").write_text("{}")
    (root / "data").mkdir()
    (root / "data" / "index.json").write_text("[]")
    (root / "data" / "index.en.json").write_text("[]")
    return root


async def test_cache_control_rules(aiohttp_client, make_args, web_root):
    c = await app_client(aiohttp_client, make_args, "--front-end-root", str(web_root))
    expected = {
        "/app.js": (200, "no-cache"),
        "/style.css": (200, "no-cache"),
        "/missing.js": (404, "no-cache"),
        "/data/index.json": (200, "no-cache"),
        "/data/index.en.json": (200, "no-cache"),
        "/pic.PNG": (200, "public, max-age=86400"),
        "/photo.webp": (200, "public, max-age=86400"),
        "/missing.jpg": (404, "public, max-age=3600"),
        "/data.json": (200, None),
        "/": (200, "no-cache"),  # set by the index handler itself (with Pragma and Expires)
        "/system_stats": (200, None),
    }
    for path, (status, cache) in expected.items():
        r = await c.get(path)
        assert (r.status, r.headers.get("Cache-Control")) == (status, cache), path
    r = await c.get("/pic.PNG", headers={"If-Modified-Since": (await c.get("/pic.PNG")).headers["Last-Modified"]})
    # a file response becomes a 304 only when it is sent, after the middleware ran: the
    # revalidation carries the same caching policy as the 200 (as with ComfyUI)
    assert r.status == 304 and r.headers["Cache-Control"] == "public, max-age=86400"


async def test_view_urls_get_no_cache_header(client, base_dir):
    (base_dir / "output" / "x.png").write_bytes(b"png")
    r = await client.get("/view?filename=x.png")
    assert r.status == 200 and "Cache-Control" not in r.headers


# -- origin check --------------------------------------------------------------------

@pytest.mark.parametrize("host,origin,status", [
    ("127.0.0.1:8188", "http://evil.example", 403),
    ("127.0.0.1:8188", "http://evil.example:8188", 403),
    ("localhost:8188", "https://attacker.test:443", 403),
    ("[::1]:8188", "http://evil.example", 403),
    ("127.0.0.1:8188", "http://127.0.0.1:8188", 200),
    ("127.0.0.1:8188", "http://127.0.0.1", 200),  # origin without port: hosts compared without ports
    ("127.0.0.1", "http://127.0.0.1:9999", 200),  # host without port: likewise
    ("localhost:8188", "http://LOCALHOST:8188", 200),
    ("127.0.0.1:8188", "http://127.0.0.1:9000", 403),
    ("192.0.2.10:8188", "http://evil.example", 200),  # not a loopback host: not checked
    ("127.0.0.1:8188", "null", 200),  # no host in the origin: nothing to compare
])
async def test_origin_check(client, host, origin, status):
    r = await client.get("/system_stats", headers={"Host": host, "Origin": origin})
    assert r.status == status
    if status == 403:
        assert await r.read() == b""


async def test_origin_check_blocks_writes_before_they_happen(client, base_dir):
    headers = {"Host": "127.0.0.1:8188", "Origin": "http://evil.example"}
    r = await client.post("/settings/a", data="1", headers=headers)
    assert r.status == 403
    assert await (await client.get("/settings")).json() == {}


async def test_options_is_an_empty_200_without_reaching_handlers(client, base_dir):
    r = await client.options("/upload/image")
    assert r.status == 200 and await r.read() == b""
    assert "Access-Control-Allow-Origin" not in r.headers
    r = await client.options("/settings", headers={"Host": "127.0.0.1:8188", "Origin": "http://evil.example"})
    assert r.status == 403


def test_is_loopback():
    assert middleware.is_loopback("127.0.0.1") and middleware.is_loopback("::1")
    assert middleware.is_loopback("localhost")
    assert not middleware.is_loopback("192.0.2.1") and not middleware.is_loopback(None)
    assert not middleware.is_loopback("no-such-host.invalid")


def test_origin_mismatch_with_malformed_ports():
    assert middleware.origin_mismatch("127.0.0.1:8188", "http://127.0.0.1:notaport") is True
    assert middleware.origin_mismatch("example.com:x", "http://evil.example") is False


# -- CORS ----------------------------------------------------------------------------

CORS_HEADERS = {"Access-Control-Allow-Methods": "POST, GET, DELETE, PUT, OPTIONS, PATCH",
                "Access-Control-Allow-Headers": "Content-Type, Authorization",
                "Access-Control-Allow-Credentials": "true"}


@pytest.mark.parametrize("flags,origin", [(("--enable-cors-header",), "*"),
                                          (("--enable-cors-header", "http://a.example"), "http://a.example")])
async def test_cors_headers_on_every_response(aiohttp_client, make_args, flags, origin):
    c = await app_client(aiohttp_client, make_args, *flags)
    foreign = {"Host": "127.0.0.1:8188", "Origin": "http://evil.example"}
    for method, path, status in (("GET", "/system_stats", 200), ("GET", "/no/such/thing", 404),
                                 ("POST", "/view", 405), ("GET", "/userdata", 400),
                                 ("OPTIONS", "/prompt", 200)):
        r = await c.request(method, path, headers=foreign)
        assert r.status == status, path
        assert r.headers["Access-Control-Allow-Origin"] == origin
        for k, v in CORS_HEADERS.items():
            assert r.headers[k] == v
    r = await c.options("/settings")
    assert await r.read() == b""


# -- CSP -----------------------------------------------------------------------------

async def test_csp_only_with_disable_api_nodes(aiohttp_client, make_args, client):
    assert "Content-Security-Policy" not in (await client.get("/system_stats")).headers
    c = await app_client(aiohttp_client, make_args, "--disable-api-nodes")
    for path in ("/system_stats", "/no/such/thing"):
        csp = (await c.get(path)).headers["Content-Security-Policy"]
        assert csp.startswith("default-src 'self';") and "img-src 'self' data: blob:;" in csp
        assert "script-src 'self' 'unsafe-inline' 'unsafe-eval' blob:;" in csp


# -- gzip ----------------------------------------------------------------------------

async def test_gzip_only_when_enabled_and_accepted(aiohttp_client, make_args, client, base_dir):
    r = await client.get("/system_stats", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in r.headers
    c = await app_client(aiohttp_client, make_args, "--enable-compress-response-body")
    r = await c.get("/system_stats", headers={"Accept-Encoding": "gzip, deflate"})
    assert r.headers["Content-Encoding"] == "gzip" and (await r.json())["system"]["comfyui_version"] == "0.8.0"
    r = await c.get("/system_stats", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in r.headers
    (base_dir / "output" / "x.png").write_bytes(b"\x89PNG" + b"0" * 100)
    r = await c.get("/view?filename=x.png", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in r.headers  # only JSON and plain text are compressed


# -- request size --------------------------------------------------------------------

async def test_bodies_over_max_upload_size_are_413(aiohttp_client, make_args, base_dir):
    c = await app_client(aiohttp_client, make_args, "--max-upload-size", "0.01")  # 10 486 bytes
    big_json = json.dumps({"k": "x" * 20000})
    assert (await c.post("/settings", data=big_json)).status == 413
    assert (await c.post("/settings/k", data=big_json)).status == 413
    assert (await c.post("/userdata/x.json", data=big_json)).status == 413
    form = aiohttp.FormData()
    form.add_field("image", b"x" * 20000, filename="a.png")
    assert (await c.post("/api/upload/image", data=form)).status == 413
    assert (await c.post("/settings/k", data=json.dumps("small"))).status == 200
    assert await (await c.get("/settings")).json() == {"k": "small"}


async def test_default_limit_is_100_mb(client):
    assert client.server.app._client_max_size == 100 * 1024 * 1024


# -- malformed requests --------------------------------------------------------------

@pytest.mark.parametrize("method,path,data,headers", [
    ("POST", "/settings", "{broken", {}),
    ("POST", "/prompt", "{not json", {}),
    ("POST", "/settings/x", b"\xff\xfe\x00", {}),
    ("POST", "/users", "[]", {}),
    ("PATCH", "/internal/logs/subscribe", "nope", {}),
    ("POST", "/upload/image", b"--zz\r\nbroken", {"Content-Type": "multipart/form-data; boundary=zz"}),
    ("POST", "/upload/mask", b"x", {"Content-Type": "multipart/form-data"}),
    ("GET", "/view?filename=a%00.png&subfolder=b%00", None, {}),
    ("GET", "/userdata/a%2500.json", None, {}),
])
async def test_malformed_requests_are_4xx_with_a_message(client, method, path, data, headers):
    r = await client.request(method, path, data=data, headers=headers)
    assert 400 <= r.status < 500, await r.text()
    if r.content_type == "application/json":
        assert (await r.json())["error"]


async def test_guard_answers_value_errors_with_400(aiohttp_client, make_args):
    """A ValueError escaping any handler (custom node routes included) is a 400, not a 500;
    other exceptions stay 500s."""
    from aiohttp import web
    from server.app import create_app
    app = create_app(make_args())

    async def parses(request):
        return web.json_response(json.loads(await request.text()))

    async def crashes(request):
        raise RuntimeError("bug")

    app.router.add_post("/custom/parse", parses)
    app.router.add_get("/custom/crash", crashes)
    c = await aiohttp_client(app)
    r = await c.post("/custom/parse", data="{no")
    assert r.status == 400 and (await r.json())["error"].startswith("Bad request:")
    assert await (await c.post("/custom/parse", data="[1]")).json() == [1]
    assert (await c.get("/custom/crash")).status == 500


# -- methods, HEAD, /api twins -------------------------------------------------------

async def test_unknown_paths_and_wrong_methods(client):
    assert (await client.get("/no/such/route")).status == 404
    assert (await client.post("/view")).status == 405
    assert (await client.delete("/system_stats")).status == 405
    assert (await client.put("/userdata/a.json", data=b"x")).status == 405


@pytest.mark.parametrize("path", ["/system_stats", "/features", "/embeddings", "/models", "/settings", "/users",
                                  "/experiment/models", "/internal/logs", "/internal/folder_paths"])
async def test_head_on_get_routes(client, path):
    r = await client.head(path)
    assert r.status == 200 and await r.read() == b""
    if not path.startswith("/internal"):
        assert (await client.head("/api" + path)).status == 200


async def test_deprecated_paths_are_logged_once(client, caplog):
    middleware._deprecated_seen.discard("/scripts/ui.js")
    with caplog.at_level(logging.WARNING, logger="server.middleware"):
        await client.get("/scripts/ui.js")
        await client.get("/scripts/ui.js")
    assert sum("deprecated legacy API: /scripts/ui.js" in m for m in caplog.messages) == 1
