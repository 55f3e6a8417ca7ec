"""Progress of the running prompt: per-node state sent as `progress_state`, step progress
as `progress`, and latent previews as binary frames (API.md §10.3, §10.6).

ProgressReporter is installed as the models.progress hook while a prompt runs, so any node
(or sampler) calling ProgressBar.update reaches the client.
"""
from __future__ import annotations

import io
import threading

from PIL import Image, ImageOps

from executor.node_calls import current_node

PREVIEW = "__preview__"  # the hub's pseudo event for preview images (see server/ws.py)


def encode_preview(preview) -> tuple[str, bytes]:
    """("JPEG"|"PNG", PIL image, max size) -> (format, encoded bytes)."""
    fmt, image, max_size = preview
    if max_size is not None:
        image = ImageOps.contain(image, (max_size, max_size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format=fmt, quality=95, compress_level=1)
    return fmt, buf.getvalue()


class ProgressReporter:
    """Per-node progress of one prompt. Every change sends the cumulative `progress_state` of
    all nodes started so far (to the client, or to everyone when the prompt has none)."""

    def __init__(self, sink, prompt_id, dynprompt, client_id):
        self.sink = sink
        self.prompt_id = prompt_id
        self.dynprompt = dynprompt
        self.client_id = client_id
        self.nodes: dict[str, dict] = {}  # node id -> {"value", "max", "state"}
        self.current_node_id = None
        self.lock = threading.Lock()

    def _ids(self, node_id):
        return {"display_node_id": self.dynprompt.get_display_node_id(node_id),
                "parent_node_id": self.dynprompt.get_parent_node_id(node_id),
                "real_node_id": self.dynprompt.get_real_node_id(node_id)}

    def _send_state(self):
        nodes = {nid: {"value": s["value"], "max": s["max"], "state": s["state"], "node_id": nid,
                       "prompt_id": self.prompt_id, **self._ids(nid)}
                 for nid, s in self.nodes.items()}
        self.sink.send("progress_state", {"prompt_id": self.prompt_id, "nodes": nodes}, self.client_id)

    def _entry(self, node_id) -> dict:
        return self.nodes.setdefault(node_id, {"value": 0, "max": 1, "state": "running"})

    def start(self, node_id):
        with self.lock:
            self._entry(node_id).update(value=0.0, max=1.0, state="running")
            self.current_node_id = node_id
            self._send_state()

    def finish(self, node_id):
        with self.lock:
            state = self._entry(node_id)
            state.update(state="finished", value=state["max"])
            self._send_state()

    def update(self, value, total, preview=None, node_id=None, send_progress=True):
        """The models.progress hook, called by ProgressBar from inside a node (any thread).

        Order on the wire: progress_state, a preview with metadata (clients that negotiated
        it), `progress`, then the legacy preview frame (the other clients)."""
        if node_id is None:
            ctx = current_node.get()
            node_id = ctx[1] if ctx is not None else self.current_node_id
        with self.lock:
            self._entry(node_id).update(value=value, max=total, state="running")
            self._send_state()
            frame = None
            if preview is not None:
                fmt, data = encode_preview(preview)
                meta = {"node_id": node_id, "prompt_id": self.prompt_id, **self._ids(node_id),
                        "image_type": "image/png" if fmt == "PNG" else "image/jpeg"}
                frame = (fmt, data, meta)
                self.sink.send(PREVIEW, (*frame, "metadata"), self.client_id)
            if send_progress:
                self.sink.send("progress", {"value": value, "max": total, "prompt_id": self.prompt_id,
                                            "node": node_id}, self.client_id)
            if frame is not None:
                self.sink.send(PREVIEW, (*frame, "legacy"), self.client_id)
