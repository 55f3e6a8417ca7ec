"""/queue: the running and pending jobs; clearing and deleting pending ones (API.md §2.3–§2.4)."""
from __future__ import annotations

from aiohttp import web

from server.app_keys import QUEUE
from server.routes._common import BadRequest, bad_request, read_json

routes = web.RouteTableDef()


def prompt_ids(body: dict, key: str = "delete") -> list[str]:
    """`delete` as a list of prompt ids; one id given as a plain string (the seed document's
    form) means that id, where ComfyUI would iterate its characters and delete nothing."""
    ids = body[key]
    if isinstance(ids, str):
        return [ids]
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise BadRequest(f"{key} must be a list of prompt ids (strings)")
    return ids


@routes.get("/queue")
async def get_queue(request: web.Request) -> web.Response:
    running, pending = request.app[QUEUE].get_current_queue()
    return web.json_response({"queue_running": running, "queue_pending": pending})


@routes.post("/queue")
async def post_queue(request: web.Request) -> web.Response:
    try:
        body = await read_json(request)
        ids = prompt_ids(body) if "delete" in body else []
    except BadRequest as e:
        return bad_request(str(e))
    queue = request.app[QUEUE]
    if body.get("clear"):
        queue.wipe_queue()
    for prompt_id in ids:  # first pending match per id; running jobs are left to /interrupt
        queue.delete_queue_item(lambda item, pid=prompt_id: item[1] == pid)
    return web.Response(status=200)
