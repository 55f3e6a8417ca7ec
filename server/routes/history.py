"""/history: finished prompts with their outputs and status (API.md §2.7–§2.10)."""
from __future__ import annotations

from aiohttp import web

from server.app_keys import QUEUE
from server.routes._common import BadRequest, bad_request, read_json
from server.routes.queue import prompt_ids

routes = web.RouteTableDef()


def _int_param(request: web.Request, name: str, minimum: int | None = None) -> int | None:
    value = request.rel_url.query.get(name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {value!r}")
    if minimum is not None and number < minimum:
        raise BadRequest(f"{name} must be at least {minimum}, got {number}")
    return number


@routes.get("/history")
async def get_history(request: web.Request) -> web.Response:
    """All entries oldest first; `max_items` alone gives the newest ones, `offset` skips the
    oldest. `?prompt_id=` (the seed document's lookup) gives just that entry or {}."""
    queue = request.app[QUEUE]
    prompt_id = request.rel_url.query.get("prompt_id")
    if prompt_id:
        return web.json_response(queue.get_history(prompt_id=prompt_id, deep=False))
    try:
        max_items = _int_param(request, "max_items", minimum=0)
        offset = _int_param(request, "offset")  # negative means "not given", as in ComfyUI
    except BadRequest as e:
        return bad_request(str(e))
    offset = -1 if offset is None else offset
    return web.json_response(queue.get_history(max_items=max_items, offset=offset, deep=False))


@routes.get("/history/{prompt_id}")
async def get_history_item(request: web.Request) -> web.Response:
    queue = request.app[QUEUE]
    return web.json_response(queue.get_history(prompt_id=request.match_info["prompt_id"], deep=False))


@routes.post("/history")
async def post_history(request: web.Request) -> web.Response:
    try:
        body = await read_json(request)
        ids = prompt_ids(body) if "delete" in body else []
    except BadRequest as e:
        return bad_request(str(e))
    queue = request.app[QUEUE]
    if body.get("clear"):
        queue.wipe_history()
    for prompt_id in ids:
        queue.delete_history_item(prompt_id)
    return web.Response(status=200)
