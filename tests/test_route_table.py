"""Every route of ComfyUI 0.8.0's server (API.md §13) resolves to a handler in comfyd, core routes
also under /api, /internal ones only under /internal. The behaviour of each route is tested in
the test_*_routes.py files; this is the completeness check."""
import pytest
from aiohttp.test_utils import make_mocked_request

from server.app import create_app

# (method, concrete path, core: also under /api). Paths use sample values for their parameters.
ROUTES = [
    ("GET", "/", False), ("GET", "/ws", True), ("GET", "/embeddings", True), ("GET", "/models", True),
    ("GET", "/models/checkpoints", True), ("GET", "/extensions", True), ("POST", "/upload/image", True),
    ("POST", "/upload/mask", True), ("GET", "/view", True), ("GET", "/view_metadata/loras", True),
    ("POST", "/view_metadata/loras", True), ("GET", "/system_stats", True), ("GET", "/features", True),
    ("GET", "/prompt", True), ("POST", "/prompt", True), ("GET", "/object_info", True),
    ("GET", "/object_info/KSampler", True), ("GET", "/queue", True), ("POST", "/queue", True),
    ("POST", "/interrupt", True), ("GET", "/interrupt", True), ("POST", "/free", True), ("GET", "/history", True),
    ("GET", "/history/abc", True), ("POST", "/history", True), ("GET", "/api/jobs", False),
    ("GET", "/api/jobs/abc", False), ("GET", "/users", True), ("POST", "/users", True), ("GET", "/settings", True),
    ("GET", "/settings/Comfy.X", True), ("POST", "/settings", True), ("POST", "/settings/Comfy.X", True),
    ("GET", "/userdata", True), ("GET", "/v2/userdata", True), ("GET", "/userdata/a.json", True),
    ("POST", "/userdata/a.json", True), ("DELETE", "/userdata/a.json", True),
    ("POST", "/userdata/a.json/move/b.json", True), ("GET", "/experiment/models", True),
    ("GET", "/experiment/models/checkpoints", True), ("GET", "/experiment/models/preview/checkpoints/0/a.safetensors", True),
    ("GET", "/workflow_templates", True), ("GET", "/i18n", True), ("GET", "/global_subgraphs", True),
    ("GET", "/global_subgraphs/abc", True), ("GET", "/templates/index.json", False),
    ("GET", "/internal/logs", False), ("GET", "/internal/logs/raw", False), ("PATCH", "/internal/logs/subscribe", False),
    ("GET", "/internal/folder_paths", False), ("GET", "/internal/files/output", False),
]


def _is_static(match) -> bool:
    return getattr(match.handler, "__qualname__", "") == "static_dir_handler.<locals>.serve"


@pytest.fixture
def app(make_args):
    return create_app(make_args())


async def _resolves(app, method, path) -> bool:
    match = await app.router.resolve(make_mocked_request(method, path, app=app))
    if match.http_exception is None:
        # the static web root answers any GET; an API route must have a handler of its own
        return path == "/" or path.startswith("/templates/") or not _is_static(match)
    # sub-applications (/internal) resolve through their own router
    for resource in app.router.resources():
        sub = getattr(resource, "_app", None)
        if sub is not None and path.startswith(resource.canonical):
            inner = await sub.router.resolve(make_mocked_request(method, path[len(resource.canonical):], app=sub))
            return inner.http_exception is None
    return False


@pytest.mark.parametrize("method,path,core", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_route_exists(app, method, path, core):
    assert await _resolves(app, method, path), f"{method} {path} is not routed"
    if core:
        assert await _resolves(app, method, "/api" + path), f"{method} /api{path} is not routed"
    if path.startswith("/internal/"):
        assert not await _resolves(app, method, "/api" + path), "internal routes are not under /api"


async def test_the_check_can_fail(app):
    """The web root is a GET catch-all for static files; API routes must be matched by their own
    handlers, so compare handlers: an unknown POST/DELETE route does not resolve."""
    assert not await _resolves(app, "GET", "/no/such/route")
    assert not await _resolves(app, "POST", "/no/such/route")
    assert not await _resolves(app, "DELETE", "/no/such/route")
