"""Middlewares (API.md §1.3), outermost first: cache headers, the deprecation log, optional
gzip, the origin check that stops other websites from driving a local server (or CORS with
--enable-cors-header), CSP with --disable-api-nodes, and innermost a guard that turns
malformed requests into a 400 with a message instead of a 500.

Body size: create_app sets client_max_size, and every body read the routes do
(request.read/text/json/post) enforces it with a 413; the guard lets that 413 through."""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import urllib.parse

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
ONE_HOUR, ONE_DAY = 3600, 86400
CORS_METHODS = "POST, GET, DELETE, PUT, OPTIONS, PATCH"
CORS_HEADERS = "Content-Type, Authorization"
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' blob:; "
       "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self'; "
       "connect-src 'self'; frame-src 'self'; object-src 'self';")
COMPRESSIBLE = ("application/json", "text/plain")


def _cache_headers(path: str, response) -> None:
    last = path.rsplit("/", 1)[-1]
    if path.endswith((".js", ".css")) or (last.startswith("index") and last.endswith(".json")):
        response.headers.setdefault("Cache-Control", "no-cache")
    elif path.lower().endswith(IMAGE_SUFFIXES):
        status = response.status
        if status == 404:
            response.headers.setdefault("Cache-Control", f"public, max-age={ONE_HOUR}")
        elif 200 <= status <= 206 or status in (301, 308):
            response.headers.setdefault("Cache-Control", f"public, max-age={ONE_DAY}")
        elif status in (302, 303, 307):
            response.headers.setdefault("Cache-Control", "no-cache")


@web.middleware
async def cache_control(request: web.Request, handler):
    """Scripts, styles and index*.json must be revalidated; images may be cached. Also applied
    to raised HTTP errors (a static file's 404 is raised, not returned)."""
    try:
        response = await handler(request)
    except web.HTTPException as e:
        _cache_headers(request.path, e)
        raise
    _cache_headers(request.path, response)
    return response


_deprecated_seen: set[str] = set()


@web.middleware
async def deprecation_log(request: web.Request, handler):
    """Custom-node scripts importing the legacy frontend API are logged once per path."""
    path = request.path
    if path.startswith(("/scripts/ui", "/extensions/core/")) and path not in _deprecated_seen:
        _deprecated_seen.add(path)
        log.warning("[DEPRECATION WARNING] Detected import of deprecated legacy API: %s. This is likely "
                    "caused by a custom node extension using outdated APIs.", path)
    return await handler(request)


@web.middleware
async def gzip(request: web.Request, handler):
    response = await handler(request)
    if isinstance(response, web.Response) and response.content_type in COMPRESSIBLE and response.body \
            and "gzip" in request.headers.get("Accept-Encoding", ""):
        response.enable_compression(web.ContentCoding.gzip)
    return response


@functools.lru_cache(maxsize=256)
def is_loopback(host: str | None) -> bool:
    """A literal loopback address, or a name that resolves only to loopback addresses.
    Cached: the check runs on every request that carries an Origin."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    loopback = False
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            for *_, sockaddr in socket.getaddrinfo(host, None, family, socket.SOCK_STREAM):
                if not ipaddress.ip_address(sockaddr[0]).is_loopback:
                    return False
                loopback = True
        except (socket.gaierror, UnicodeError, ValueError):
            pass
    return loopback


def origin_mismatch(host: str, origin: str) -> bool:
    """True when a browser on another site sends a request to this (loopback) server:
    Host and Origin differ, compared without ports when either side has none."""
    try:
        host_parsed = urllib.parse.urlsplit("//" + host.lower())
        host_name = host_parsed.hostname
    except ValueError:
        return False  # not a host name at all, so not a loopback one
    if not is_loopback(host_name):
        return False
    try:
        parsed = urllib.parse.urlparse(origin)
        origin_domain = parsed.netloc.lower()
        host_domain = host.lower()
        if parsed.port is None:
            host_domain = host_name
        if host_parsed.port is None:
            origin_domain = parsed.hostname
    except ValueError:  # a port that is not a number: no page of this server sends that
        return True
    if not host_domain or not origin_domain:
        return False
    return host_domain != origin_domain


@web.middleware
async def origin_check(request: web.Request, handler):
    host, origin = request.headers.get("Host"), request.headers.get("Origin")
    if host and origin and origin_mismatch(host, origin):
        log.warning("request with non matching host and origin %s != %s, returning 403", host, origin)
        return web.Response(status=403)
    if request.method == "OPTIONS":
        return web.Response()
    return await handler(request)


def cors(allowed_origin: str):
    headers = {"Access-Control-Allow-Origin": allowed_origin,
               "Access-Control-Allow-Methods": CORS_METHODS,
               "Access-Control-Allow-Headers": CORS_HEADERS,
               "Access-Control-Allow-Credentials": "true"}

    @web.middleware
    async def cors_middleware(request: web.Request, handler):
        if request.method == "OPTIONS":  # pre-flight
            response = web.Response()
        else:
            try:
                response = await handler(request)
            except web.HTTPException as e:  # error responses carry the headers too
                e.headers.update(headers)
                raise
        response.headers.update(headers)
        return response
    return cors_middleware


@web.middleware
async def content_security_policy(request: web.Request, handler):
    if request.method == "OPTIONS":
        response = web.Response()
    else:
        try:
            response = await handler(request)
        except web.HTTPException as e:
            e.headers["Content-Security-Policy"] = CSP
            raise
    response.headers["Content-Security-Policy"] = CSP
    return response


@web.middleware
async def bad_request_guard(request: web.Request, handler):
    """Malformed input (undecodable JSON or text, broken multipart bodies, impossible paths)
    surfaces as ValueError deep inside a handler; answer 400 with the reason, not 500.
    HTTP errors (413 from an oversized body, 404, ...) pass through unchanged."""
    from server.routes._common import BadRequest
    try:
        return await handler(request)
    except (web.HTTPException, asyncio.CancelledError):
        raise
    except BadRequest as e:
        return web.json_response({"error": str(e)}, status=400)
    except ValueError as e:  # includes json.JSONDecodeError and UnicodeDecodeError
        log.warning("bad request %s %s: %s", request.method, request.path, e)
        return web.json_response({"error": f"Bad request: {e}"}, status=400)
    except HttpProcessingError as e:  # malformed headers inside a multipart body
        log.warning("bad request %s %s: %s", request.method, request.path, e.message)
        status = e.code if 400 <= (e.code or 0) < 500 else 400
        return web.json_response({"error": f"Bad request: {e.message}"}, status=status)


def build(args) -> list:
    chain = [cache_control, deprecation_log]
    if args.enable_compress_response_body:
        chain.append(gzip)
    chain.append(cors(args.enable_cors_header) if args.enable_cors_header else origin_check)
    if args.disable_api_nodes:
        chain.append(content_security_policy)
    chain.append(bad_request_guard)
    return chain
