"""/queue: the running and pending jobs; clearing and deleting pending ones (API.md §2.3–§2.4)."""
from __future__ import annotations

from aiohttp import web

from server.app_keys import QUEUE
from server.routes._common import BadRequest, bad_request, read_json

routes = web.RouteTableDef()


@routes.get("/queue")
async def get_queue(request: web.Request) -> web.Response:
    running, pending = request.app[QUEUE].get_current_queue()
    return web.json_response({"queue_running": running, "queue_pending": pending})


@routes.post("/queue")
async def post_queue(request: web.Request) -> web.Response:
    try:
        body = await read_json(request)
    except BadRequest as e:
        return bad_request(str(e))
    queue = request.app[QUEUE]
    if body.get("clear"):
        queue.wipe_queue()
    if "delete" in body:
        ids = body["delete"]
        if isinstance(ids, str):  # the seed document sends one id as a string
            ids = [ids]
        if not isinstance(ids, list):
            return bad_request("delete must be a list of prompt ids")
        for prompt_id in ids:
            queue.delete_queue_item(lambda item, pid=prompt_id: item[1] == pid)
    return web.Response(status=200)
