"""/prompt (queue a workflow, read the queue counter), /interrupt and /free (API.md §2.1–§2.6)."""
from __future__ import annotations

import logging
import time
import uuid

from aiohttp import web

from executor.validation import validate_prompt
from server.app_keys import QUEUE, WORKER
from server.routes._common import BadRequest, bad_request, read_json

routes = web.RouteTableDef()
log = logging.getLogger(__name__)

SENSITIVE_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
# Hooks custom nodes register (PromptServer.instance.add_on_prompt_handler) to rewrite bodies.
on_prompt_handlers: list = []


def _no_prompt():
    return {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": {}}


@routes.get("/prompt")
async def get_prompt(request: web.Request) -> web.Response:
    return web.json_response({"exec_info": {"queue_remaining": request.app[QUEUE].get_tasks_remaining()}})


@routes.post("/prompt")
async def post_prompt(request: web.Request) -> web.Response:
    try:
        body = await read_json(request)
    except BadRequest as e:
        return bad_request(str(e))
    for handler in on_prompt_handlers:
        try:
            body = handler(body)
        except Exception:
            log.exception("an on_prompt handler failed")
    queue = request.app[QUEUE]
    if "number" in body:
        try:
            number = float(body["number"])
        except (TypeError, ValueError):
            return bad_request("number must be a number")
    else:
        number = queue.next_number(front=bool(body.get("front")))
    if "prompt" not in body:
        return web.json_response({"error": _no_prompt(), "node_errors": {}}, status=400)
    prompt = body["prompt"]
    if not isinstance(prompt, dict) or not all(isinstance(v, dict) for v in prompt.values()):
        return bad_request("prompt must be an object of {node_id: {class_type, inputs}}")
    for node in prompt.values():
        if not isinstance(node.get("inputs", {}), dict):
            return bad_request("each node's inputs must be an object")
        node.setdefault("inputs", {})
    prompt_id = str(body.get("prompt_id", uuid.uuid4()))
    targets = body.get("partial_execution_targets")
    ok, error, outputs, node_errors = await validate_prompt(prompt_id, prompt, targets)
    extra_data = body.get("extra_data", {})
    if not isinstance(extra_data, dict):
        return bad_request("extra_data must be an object")
    if "client_id" in body:
        extra_data["client_id"] = body["client_id"]
    if not ok:
        log.warning("invalid prompt: %s", error)
        return web.json_response({"error": error, "node_errors": node_errors}, status=400)
    sensitive = {k: extra_data.pop(k) for k in SENSITIVE_KEYS if k in extra_data}
    extra_data["create_time"] = int(time.time() * 1000)
    queue.put((number, prompt_id, prompt, extra_data, outputs, sensitive))
    return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})


async def _interrupt(request: web.Request) -> web.Response:
    try:
        body = await read_json(request, default={}, kind=None)
    except BadRequest:
        body = {}  # ComfyUI treats a non-JSON body as {}
    prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
    worker = request.app[WORKER]
    if not worker.interrupt(prompt_id or None):
        log.info("interrupt for %s ignored: running is %s", prompt_id, list(worker.running))
    return web.Response(status=200)


routes.post("/interrupt")(_interrupt)


@routes.post("/free")
async def post_free(request: web.Request) -> web.Response:
    try:
        body = await read_json(request)
    except BadRequest as e:
        return bad_request(str(e))
    queue = request.app[QUEUE]
    if body.get("unload_models", False):
        queue.set_flag("unload_models", True)
    if body.get("free_memory", False):
        queue.set_flag("free_memory", True)
    return web.Response(status=200)


# The seed document's form: GET /interrupt interrupts the running prompt (HEAD does nothing).
routes.get("/interrupt", allow_head=False)(_interrupt)
