"""Process entry point: parse flags, set up logging, build the app, serve."""
from __future__ import annotations

import asyncio
import logging
import ssl
import sys

from aiohttp import web

from server import cli


def main(argv: list[str] | None = None) -> None:
    args = cli.parse_args(argv)
    from models.devices import select_visible_devices
    select_visible_devices(args)  # --cuda-device: CUDA_VISIBLE_DEVICES before CUDA initialises
    from server import logs
    logs.capture_std_streams()
    logging.basicConfig(level=getattr(logging, args.verbose),
                        stream=sys.stdout if args.log_stdout else sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from server.app import create_app
    # the loop exists before the app so custom packs can take PromptServer.instance.loop at import
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app = create_app(args)
    ssl_ctx = None
    if args.tls_keyfile and args.tls_certfile:
        ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ssl_ctx.load_cert_chain(certfile=args.tls_certfile, keyfile=args.tls_keyfile)
    hosts = [h.strip() for h in args.listen.split(",") if h.strip()]
    scheme = "https" if ssl_ctx else "http"
    if not args.dont_print_server:
        for h in hosts:
            shown = f"[{h}]" if ":" in h else h
            print(f"To see the GUI go to: {scheme}://{shown}:{args.port}", flush=True)
    web.run_app(app, host=hosts, port=args.port, ssl_context=ssl_ctx, loop=loop,
                print=None, access_log=None if args.dont_print_server else logging.getLogger("aiohttp.access"))
