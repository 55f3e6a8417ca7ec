"""/internal/* over HTTP and WebSocket (API.md §9): the log ring and live `logs` messages,
folder paths and the input/output/temp listings. None of them has an /api twin."""
import asyncio
import contextlib
import json
import os
import sys

import pytest

from server import logs


@pytest.fixture
def captured():
    """Installs the log ring on stdout/stderr for the test body. pytest swaps sys.stdout between
    a test's phases, so the streams are wrapped when the test starts (first `with`)."""
    @contextlib.contextmanager
    def capturing():
        logs.clear()
        logs.capture_std_streams()
        try:
            yield logs
        finally:
            logs.release_std_streams()
            logs.clear()
    return capturing


# -- logs ----------------------------------------------------------------------------

async def test_logs_ring_over_http(client, captured):
    with captured():
        print("hello from stdout")
        sys.stderr.write("an error line\n")
        raw = await (await client.get("/internal/logs/raw")).json()
        assert list(raw) == ["entries", "size"]
        messages = [e["m"] for e in raw["entries"]]
        assert messages == ["hello from stdout", "\n", "an error line\n"]
        assert all(set(e) == {"t", "m"} and "T" in e["t"] for e in raw["entries"])
        assert set(raw["size"]) == {"cols", "rows"} and raw["size"]["cols"] > 0
        text = await (await client.get("/internal/logs")).json()
        assert isinstance(text, str)
        assert text == "".join(f"{e['t']} - {e['m']}" for e in raw["entries"])
        assert " - hello from stdout" in text


async def test_logs_ring_keeps_the_last_300_writes(client, captured):
    with captured():
        for i in range(350):
            sys.stdout.write(f"line {i}\n")
        entries = (await (await client.get("/internal/logs/raw")).json())["entries"]
        assert len(entries) == 300
        assert entries[0]["m"] == "line 50\n" and entries[-1]["m"] == "line 349\n"


async def test_carriage_return_replaces_an_unfinished_line(client, captured):
    with captured():
        sys.stdout.write("progress 1/3")
        sys.stdout.write("\rprogress 2/3")
        sys.stdout.write("\rprogress 3/3\n")
        sys.stdout.write("\rnext\n")  # the previous entry is a finished line: kept
        messages = [e["m"] for e in (await (await client.get("/internal/logs/raw")).json())["entries"]]
        assert messages == ["\rprogress 3/3\n", "\rnext\n"]


async def test_logs_without_capture_are_empty(client):
    logs.clear()
    assert await (await client.get("/internal/logs")).json() == ""
    assert (await (await client.get("/internal/logs/raw")).json())["entries"] == []


async def receive_json(ws, timeout=2.0):
    return json.loads((await asyncio.wait_for(ws.receive(), timeout)).data)


async def test_subscribed_sockets_receive_logs_messages(client, captured):
    with captured():
        ws = await client.ws_connect("/ws?clientId=term1")
        assert (await receive_json(ws))["type"] == "status"
        other = await client.ws_connect("/ws?clientId=other")
        await receive_json(other)
        r = await client.patch("/internal/logs/subscribe", data=json.dumps({"clientId": "term1", "enabled": True}))
        assert r.status == 200 and await r.read() == b""
        print("visible to the terminal")
        msg = await receive_json(ws)
        assert msg["type"] == "logs"
        assert [e["m"] for e in msg["data"]["entries"]] == ["visible to the terminal", "\n"]
        size = msg["data"]["size"]
        assert size is None or set(size) == {"cols", "rows"}
        sys.stderr.write("second\n")
        second = await receive_json(ws)
        assert [e["m"] for e in second["data"]["entries"]] == ["second\n"]
        assert second["data"]["size"] is None  # only sent again when the terminal size changed
        # unsubscribed: nothing more arrives; the other socket never got any
        await client.patch("/internal/logs/subscribe", data=json.dumps({"clientId": "term1", "enabled": False}))
        print("not sent")
        with pytest.raises(asyncio.TimeoutError):
            await receive_json(ws, timeout=0.3)
        with pytest.raises(asyncio.TimeoutError):
            await receive_json(other, timeout=0.1)
        await ws.close()
        await other.close()


async def test_subscription_of_a_closed_socket_is_dropped(client, captured):
    with captured():
        ws = await client.ws_connect("/ws?clientId=gone")
        await receive_json(ws)
        await client.patch("/internal/logs/subscribe", data=json.dumps({"clientId": "gone", "enabled": True}))
        await ws.close()
        await asyncio.sleep(0.05)
        print("after close")
        assert not logs.subscribed("gone")


@pytest.mark.parametrize("body", ["", "not json", "[]", json.dumps({"enabled": True}),
                                  json.dumps({"clientId": "x"}), json.dumps({"clientId": 5, "enabled": True})])
async def test_subscribe_refuses_bad_bodies(client, body):
    r = await client.patch("/internal/logs/subscribe", data=body)
    assert r.status == 400 and "error" in await r.json()


# -- folder paths and file listings --------------------------------------------------

async def test_folder_paths(client, base_dir, tmp_path_factory):
    from models import folders
    paths = await (await client.get("/internal/folder_paths")).json()
    assert list(paths) == folders.model_kinds()
    assert paths["checkpoints"] == [str(base_dir / "models" / "checkpoints")]
    assert paths["custom_nodes"] == [str(base_dir / "custom_nodes")]
    extra = tmp_path_factory.mktemp("more_loras")
    folders.add_model_folder_path("loras", str(extra))
    paths = await (await client.get("/internal/folder_paths")).json()
    assert paths["loras"] == [str(base_dir / "models" / "loras"), str(extra)]


@pytest.mark.parametrize("kind", ["output", "input", "temp"])
async def test_files_listing_newest_first(client, base_dir, kind):
    folder = base_dir / kind
    for i, name in enumerate(["old.png", "mid.webp", "new.png"]):
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, (1_700_000_000 + i * 10, 1_700_000_000 + i * 10))
    (folder / ".DS_Store").write_bytes(b"x")
    (folder / "subdir").mkdir()
    (folder / "subdir" / "inner.png").write_bytes(b"x")
    r = await client.get(f"/internal/files/{kind}")
    assert r.status == 200 and await r.json() == ["new.png", "mid.webp", "old.png"]


async def test_files_listing_refusals(client):
    for kind in ("models", "user", "INPUT", "output%2F.."):
        r = await client.get(f"/internal/files/{kind}")
        assert r.status == 400 and await r.json() == {"error": "Invalid directory type"}


async def test_internal_routes_have_no_api_twin(client):
    for path in ("/api/internal/logs", "/api/internal/folder_paths", "/api/internal/files/output"):
        assert (await client.get(path)).status == 404
    assert (await client.head("/internal/files/output")).status == 200
    assert (await client.post("/internal/logs")).status == 405
