"""`server.PromptServer` for custom node packs: `PromptServer.instance.routes` (added to the
app like core routes), `send_sync(event, data, sid)`, `client_id`, `last_node_id`..."""
from __future__ import annotations

import asyncio
import warnings

from aiohttp import web


def _current_loop():
    """The loop the app will run on: the running one (tests), else the one main() set."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                return asyncio.get_event_loop()
            except RuntimeError:
                return None


class BinaryEventTypes:
    """Binary WebSocket frame types (API.md §10.6), as packs name them."""
    PREVIEW_IMAGE = 1
    UNENCODED_PREVIEW_IMAGE = 2
    TEXT = 3
    PREVIEW_IMAGE_WITH_METADATA = 4


def _encode_preview(preview) -> tuple[str, bytes]:
    from executor.progress import encode_preview
    fmt, image, max_size = preview
    return encode_preview(("PNG" if fmt == "PNG" else "JPEG", image, max_size))


class _UserManagerView:
    """ComfyUI's UserManager methods packs call, over comfyd's server/users.py."""

    def __init__(self, app: web.Application):
        self.app = app

    def _users(self):
        from server.routes.userdata import USERS
        return self.app[USERS]

    def get_request_user_id(self, request) -> str:
        return self._users().user_id(request)

    def get_request_user_filepath(self, request, file, type="userdata", create_dir=True):
        if type != "userdata":
            raise KeyError("Unknown filepath type:" + type)
        return self._users().user_path(request, file, create_dir)


class PromptServer:
    instance: "PromptServer" = None  # type: ignore[assignment]

    def __init__(self, app: web.Application, hub, queue=None, worker=None):
        self.app = app
        self.hub = hub
        self.routes = web.RouteTableDef()
        self.prompt_queue = queue
        self.worker = worker
        # packs schedule onto it from worker threads (call_soon_threadsafe, run_coroutine_threadsafe)
        self.loop = _current_loop()
        self.sockets = hub.sockets
        self.sockets_metadata = hub.client_flags
        from server.routes import prompt
        self.on_prompt_handlers = prompt.on_prompt_handlers  # the list POST /prompt runs
        self.supports = ["custom_nodes_from_web"]
        PromptServer.instance = self

    @property
    def user_manager(self):
        return _UserManagerView(self.app)

    @property
    def web_root(self):
        from server import frontend
        from server.app_keys import ARGS
        return frontend.web_root(self.app[ARGS])

    @property
    def number(self):
        """The next prompt number; packs that queue prompts themselves read and bump it."""
        return self.prompt_queue.number_counter

    @number.setter
    def number(self, value):
        with self.prompt_queue.mutex:
            self.prompt_queue.number_counter = value

    @property
    def client_id(self):
        return self.worker.running_client_id if self.worker is not None else None

    @property
    def last_prompt_id(self):
        return self.worker.running_prompt_id if self.worker is not None else None

    @property
    def last_node_id(self):
        return self.worker.executor.current_node if self.worker is not None else None

    def send_sync(self, event, data, sid=None):
        """JSON events, binary frames (int event + bytes), and ComfyUI's two image forms:
        UNENCODED_PREVIEW_IMAGE with ("JPEG"|"PNG", PIL image, max size) and
        PREVIEW_IMAGE_WITH_METADATA with (that tuple, metadata dict)."""
        from server import ws
        if event == BinaryEventTypes.UNENCODED_PREVIEW_IMAGE:
            fmt, image_bytes = _encode_preview(data)
            code = 2 if fmt == "PNG" else 1  # the image format word of a type-1 frame
            self.hub.send(ws.PREVIEW_IMAGE, code.to_bytes(4, "big") + image_bytes, sid)
        elif event == BinaryEventTypes.PREVIEW_IMAGE_WITH_METADATA:
            preview, metadata = data
            fmt, image_bytes = _encode_preview(preview)
            self.hub.send(ws.PREVIEW, (fmt, image_bytes, metadata), sid)
        else:
            self.hub.send(event, data, sid)

    def send_progress_text(self, text, node_id, sid=None):
        """Binary TEXT frame (type 3): u32 length of the node id, the id, then the text (UTF-8)."""
        text = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        node = str(node_id).encode("utf-8")
        self.hub.send(3, len(node).to_bytes(4, "big") + node + text, sid)

    async def send(self, event, data, sid=None):
        self.send_sync(event, data, sid)

    async def send_json(self, event, data, sid=None):
        self.hub.send(event, data, sid)

    def add_on_prompt_handler(self, handler):
        self.on_prompt_handlers.append(handler)

    def queue_updated(self):
        self.hub.send("status", {"status": {"exec_info": {
            "queue_remaining": self.prompt_queue.get_tasks_remaining() if self.prompt_queue else 0}}})
