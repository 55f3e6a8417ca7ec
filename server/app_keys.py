"""Keys of the state stored on the aiohttp application."""
from aiohttp import web

ARGS = web.AppKey("args", object)
HUB = web.AppKey("hub", object)
QUEUE = web.AppKey("queue", object)
WORKER = web.AppKey("worker", object)
EXECUTOR = web.AppKey("executor", object)
