"""Helpers shared by route modules: reading JSON bodies and error responses."""
from __future__ import annotations

import json

from aiohttp import web


class BadRequest(Exception):
    pass


async def read_json(request: web.Request, default=None, kind=dict):
    """The request body parsed as JSON whatever its Content-Type (ComfyUI does not check it).
    An empty body gives `default`; malformed JSON or the wrong top-level type raises BadRequest."""
    text = await request.text()
    if not text.strip():
        if default is not None:
            return default
        raise BadRequest("request body is empty; expected JSON")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise BadRequest(f"request body is not valid JSON: {e}")
    if kind is not None and not isinstance(data, kind):
        raise BadRequest(f"request body must be a JSON {kind.__name__}")
    return data


def bad_request(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)
