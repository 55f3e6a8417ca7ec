"""The /ws WebSocket hub: client sessions, feature flags, and ordered event delivery.

It implements executor.events.EventSink. `send` may be called from any thread (the
worker runs prompts in its own thread); events are handed to the event loop and
delivered in emission order by one publisher task.
"""
from __future__ import annotations

import asyncio
import json
import logging
import struct
import uuid

from aiohttp import WSMsgType, web

log = logging.getLogger(__name__)

# Binary event types (API.md §10.6)
PREVIEW_IMAGE = 1
UNENCODED_PREVIEW_IMAGE = 2
TEXT = 3
PREVIEW_IMAGE_WITH_METADATA = 4
# Pseudo event the executor sends for a preview: data = (image_format "JPEG"|"PNG", image bytes, metadata dict
# [, "metadata"|"legacy"]). The hub picks frame type 1 or 4 per recipient, depending on its negotiated flags
# (a broadcast always gets type 1); with the 4th element only recipients of that kind get this frame.
PREVIEW = "__preview__"

_IMAGE_FORMAT_CODES = {"JPEG": 1, "PNG": 2}


def encode_binary(event: int, payload: bytes) -> bytes:
    return struct.pack(">I", event) + payload


class WebSocketHub:
    def __init__(self, server_features: dict):
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.client_flags: dict[str, dict] = {}
        self.server_features = server_features
        self.loop: asyncio.AbstractEventLoop | None = None
        self.messages: asyncio.Queue | None = None
        self._publisher: asyncio.Task | None = None
        # Hooks the server sets: greeting extras (queue count, current node).
        self.queue_remaining = lambda: 0
        self.current_executing = lambda sid: None

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.messages = asyncio.Queue()
        self._publisher = asyncio.create_task(self._publish())

    async def stop(self) -> None:
        if self._publisher:
            self._publisher.cancel()
        for ws in list(self.sockets.values()):
            await ws.close()

    # -- EventSink -------------------------------------------------------------
    def send(self, event, data, sid=None) -> None:
        if self.loop is None or self.messages is None:
            return
        try:
            self.loop.call_soon_threadsafe(self.messages.put_nowait, (event, data, sid))
        except RuntimeError:  # loop closed during shutdown
            pass

    def has_client(self, sid) -> bool:
        return sid in self.sockets

    async def _publish(self) -> None:
        while True:
            event, data, sid = await self.messages.get()
            try:
                await self._deliver(event, data, sid)
            except Exception:
                log.exception("failed to deliver %s", event)

    async def _deliver(self, event, data, sid) -> None:
        targets = [sid] if sid is not None else list(self.sockets)
        for target in targets:
            ws = self.sockets.get(target)
            if ws is None or ws.closed:
                continue
            try:
                if event == PREVIEW:
                    frame = self._preview_frame(target if sid is not None else None, *data)
                    if frame is not None:
                        await ws.send_bytes(frame)
                elif isinstance(event, int):
                    await ws.send_bytes(encode_binary(event, data))
                else:
                    await ws.send_str(json.dumps({"type": event, "data": data}))
            except (ConnectionResetError, RuntimeError) as e:
                log.debug("dropping message to %s: %s", target, e)

    def _preview_frame(self, sid, image_format, image_bytes, metadata, only_for=None) -> bytes | None:
        with_metadata = sid is not None and self.client_flags.get(sid, {}).get("supports_preview_metadata") is True
        if only_for is not None and only_for != ("metadata" if with_metadata else "legacy"):
            return None
        if with_metadata:
            meta = json.dumps(metadata).encode()
            return encode_binary(PREVIEW_IMAGE_WITH_METADATA, struct.pack(">I", len(meta)) + meta + image_bytes)
        return encode_binary(PREVIEW_IMAGE, struct.pack(">I", _IMAGE_FORMAT_CODES[image_format]) + image_bytes)

    # -- the /ws handler ---------------------------------------------------------
    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        self.sockets[sid] = ws
        try:
            await ws.send_str(json.dumps({"type": "status", "data": {
                "status": {"exec_info": {"queue_remaining": self.queue_remaining()}}, "sid": sid}}))
            node = self.current_executing(sid)
            if node is not None:
                await ws.send_str(json.dumps({"type": "executing", "data": {"node": node}}))
            first = True
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    log.debug("ws %s closed with exception %s", sid, ws.exception())
                    break
                if msg.type != WSMsgType.TEXT or not first:
                    continue
                try:
                    payload = json.loads(msg.data)
                except ValueError:
                    log.warning("invalid JSON from ws client %s", sid)
                    continue  # an invalid first frame does not end the negotiation window
                first = False
                if isinstance(payload, dict) and payload.get("type") == "feature_flags":
                    flags = payload.get("data")
                    self.client_flags[sid] = flags if isinstance(flags, dict) else {}
                    await ws.send_str(json.dumps({"type": "feature_flags", "data": self.server_features}))
        finally:
            # ComfyUI quirk kept: a replaced socket closing later unregisters the id too.
            self.sockets.pop(sid, None)
            self.client_flags.pop(sid, None)
        return ws
