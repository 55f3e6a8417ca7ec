"""The frontend web root, /templates/ and /docs/ over HTTP (API.md §1.2, §8)."""
from __future__ import annotations

import os
import re

import pytest

from server import frontend


def _web_root():
    from server import cli
    return frontend.web_root(cli.parse_args([]))


needs_frontend = pytest.mark.skipif(not _web_root() or not os.path.isdir(_web_root() or ""),
                                    reason="comfyui-frontend-package not installed")


@needs_frontend
@pytest.mark.parametrize("path", ["/", "/api/"])
async def test_index_is_html_and_never_cached(client, path):
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/html")
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["Pragma"] == "no-cache"
    assert resp.headers["Expires"] == "0"
    body = await resp.text()
    with open(os.path.join(_web_root(), "index.html"), encoding="utf-8") as f:
        assert body == f.read()


@needs_frontend
async def test_index_assets_have_their_content_types(client):
    html = await (await client.get("/")).text()
    scripts = re.findall(r'src="\.?/?(assets/[^"]+\.js)"', html)
    # user.css is linked but optional (the user's own stylesheet, absent on a fresh install)
    styles = [rel for rel in re.findall(r'href="\.?/?([^"]+\.css)"', html)
              if not rel.endswith("user.css")]
    assert scripts and styles, "index.html links no script or stylesheet"
    for rel in scripts[:3]:
        resp = await client.get("/" + rel)
        assert resp.status == 200, rel
        assert resp.headers["Content-Type"].startswith("application/javascript"), rel
        assert resp.headers["Cache-Control"] == "no-cache"
    for rel in styles[:3]:
        resp = await client.get("/" + rel)
        assert resp.status == 200, rel
        assert resp.headers["Content-Type"].startswith("text/css"), rel


@needs_frontend
@pytest.mark.parametrize("ext, expected", [(".woff2", "font/woff2"), (".svg", "image/svg+xml"),
                                           (".json", "application/json"), (".woff", "font/woff"),
                                           (".ttf", "font/ttf")])
async def test_web_root_files_by_extension(client, ext, expected):
    root = _web_root()
    found = None
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith(ext):
                found = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
                break
        if found:
            break
    if found is None:
        pytest.skip(f"this frontend release ships no {ext} file")
    resp = await client.get("/" + found)
    assert resp.status == 200
    assert resp.headers["Content-Type"].split(";")[0] == expected
    with open(os.path.join(root, found), "rb") as f:
        assert await resp.read() == f.read()


async def test_unknown_paths_are_404_and_routes_are_not_shadowed(client):
    for path in ("/no/such/file.js", "/api/no-such-route", "/free", "/upload/image", "/assets/",
                 "/%2e%2e/pyproject.toml", "/assets/..%2F..%2F..%2Fpyproject.toml"):
        resp = await client.get(path)
        assert resp.status == 404, path
    resp = await client.get("/api/object_info")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/json")
    assert "SaveImage" in await resp.json()
    resp = await client.get("/system_stats")
    assert "system" in await resp.json()


async def test_front_end_root_serves_that_folder_only(aiohttp_client, make_args, tmp_path):
    from server.app import create_app
    root = tmp_path / "ui"
    (root / "js").mkdir(parents=True)
    (root / "index.html").write_text("<html>mine</html>")
    (root / "js" / "app.mjs").write_text("export const x = 1;")
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    os.symlink(secret, root / "leak.txt")
    client = await aiohttp_client(create_app(make_args("--front-end-root", str(root))))
    resp = await client.get("/")
    assert await resp.text() == "<html>mine</html>"
    resp = await client.get("/js/app.mjs")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/javascript")
    assert (await client.head("/js/app.mjs")).status == 200
    assert (await client.get("/leak.txt")).status == 404
    assert (await client.get("/js")).status == 404
    assert (await client.post("/js/app.mjs")).status == 405


def _templates_installed() -> bool:
    return bool(frontend.template_assets())


@pytest.mark.skipif(not _templates_installed(), reason="comfyui-workflow-templates not installed")
async def test_templates_index_and_thumbnails(client):
    resp = await client.get("/templates/index.json")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["Cache-Control"] == "no-cache"
    categories = await resp.json()
    assert isinstance(categories, list) and categories
    template = categories[0]["templates"][0]
    name, media = template["name"], template.get("mediaSubtype", "webp")
    resp = await client.get(f"/templates/{name}.json")
    assert resp.status == 200
    workflow = await resp.json()
    assert "nodes" in workflow or "definitions" in workflow
    thumb = await client.get(f"/templates/{name}-1.{media}")
    assert thumb.status == 200
    assert thumb.headers["Content-Type"] == frontend.CONTENT_TYPES["." + media].split(";")[0]
    assert len(await thumb.read()) > 100
    for missing in ("/templates/no_such_template.json", "/templates/../pyproject.toml",
                    "/templates/", "/api/templates/index.json"):
        assert (await client.get(missing)).status == 404, missing


@pytest.mark.skipif(frontend.docs_root() is None, reason="comfyui-embedded-docs not installed")
async def test_embedded_docs(client):
    resp = await client.get("/docs/KSampler/en.md")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/markdown")
    with open(os.path.join(frontend.docs_root(), "KSampler", "en.md"), "rb") as f:
        assert await resp.read() == f.read()
    assert (await client.get("/docs/NoSuchNode/en.md")).status == 404
