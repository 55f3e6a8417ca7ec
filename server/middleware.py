"""Middlewares (API.md §1.3): cache headers, the origin check that stops other websites
from driving a local server (or CORS with --enable-cors-header), CSP with
--disable-api-nodes, optional gzip, and turning body-size errors into 413."""
from __future__ import annotations

import ipaddress
import logging
import socket
import urllib.parse

from aiohttp import web

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@web.middleware
async def cache_control(request: web.Request, handler):
    response = await handler(request)
    path = request.path
    last = path.rsplit("/", 1)[-1]
    if path.endswith((".js", ".css")) or (last.startswith("index") and last.endswith(".json")):
        response.headers.setdefault("Cache-Control", "no-cache")
    elif path.lower().endswith(IMAGE_SUFFIXES):
        status = response.status
        if status == 404:
            response.headers.setdefault("Cache-Control", "public, max-age=3600")
        elif 200 <= status <= 206 or status in (301, 308):
            response.headers.setdefault("Cache-Control", "public, max-age=86400")
        elif status in (302, 303, 307):
            response.headers.setdefault("Cache-Control", "no-cache")
    return response


@web.middleware
async def body_limits(request: web.Request, handler):
    """aiohttp raises 413 from inside handlers reading the body; keep it a 413, and turn
    other unexpected body/format errors into a 400 with a message instead of a 500."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except (UnicodeDecodeError, ValueError) as e:
        log.warning("bad request to %s: %s", request.path, e)
        return web.json_response({"error": f"bad request: {e}"}, status=400)


def is_loopback(host) -> bool:
    if host is None:
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
        except socket.gaierror:
            pass
    return loopback


@web.middleware
async def origin_check(request: web.Request, handler):
    host, origin = request.headers.get("Host"), request.headers.get("Origin")
    if host and origin:
        host_domain = host.lower()
        parsed = urllib.parse.urlparse(origin)
        origin_domain = parsed.netloc.lower()
        host_parsed = urllib.parse.urlsplit("//" + host_domain)
        loopback = is_loopback(host_parsed.hostname)
        if parsed.port is None:  # compare without ports when one side has none
            host_domain = host_parsed.hostname
        if host_parsed.port is None:
            origin_domain = parsed.hostname
        if loopback and host_domain and origin_domain and host_domain != origin_domain:
            log.warning("request with non matching host and origin %s != %s, returning 403", host_domain, origin_domain)
            return web.Response(status=403)
    if request.method == "OPTIONS":
        return web.Response()
    return await handler(request)


def cors(allowed_origin: str):
    headers = {"Access-Control-Allow-Origin": allowed_origin,
               "Access-Control-Allow-Methods": "POST, GET, DELETE, PUT, OPTIONS, PATCH",
               "Access-Control-Allow-Headers": "Content-Type, Authorization",
               "Access-Control-Allow-Credentials": "true"}

    @web.middleware
    async def cors_middleware(request: web.Request, handler):
        if request.method == "OPTIONS":
            response = web.Response()
        else:
            response = await handler(request)
        response.headers.update(headers)
        return response
    return cors_middleware


@web.middleware
async def content_security_policy(request: web.Request, handler):
    response = await handler(request)
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' blob:; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self'; "
        "connect-src 'self'; frame-src 'self'; object-src 'self';")
    return response


@web.middleware
async def gzip(request: web.Request, handler):
    response = await handler(request)
    if "gzip" in request.headers.get("Accept-Encoding", "") and isinstance(response, web.Response) \
            and response.content_type in ("application/json", "text/plain", "text/html") and response.body:
        response.enable_compression(web.ContentCoding.gzip)
    return response


def build(args) -> list:
    chain = [cache_control, body_limits]
    if args.enable_compress_response_body:
        chain.append(gzip)
    chain.append(cors(args.enable_cors_header) if args.enable_cors_header else origin_check)
    if args.disable_api_nodes:
        chain.append(content_security_policy)
    return chain
