"""The app builds, serves the frontend root and greets WebSocket clients."""


async def test_ws_greeting_has_sid(client):
    ws = await client.ws_connect("/ws?clientId=abc")
    msg = await ws.receive_json()
    assert msg == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "abc"}}
    await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    reply = await ws.receive_json()
    assert reply["type"] == "feature_flags"
    assert reply["data"]["max_upload_size"] == 104857600
    await ws.close()


async def test_ws_generates_hex_sid(client):
    ws = await client.ws_connect("/api/ws")
    msg = await ws.receive_json()
    sid = msg["data"]["sid"]
    assert len(sid) == 32 and int(sid, 16) >= 0
    await ws.close()


async def test_index_served(client):
    resp = await client.get("/")
    assert resp.status == 200
    assert "text/html" in resp.headers["Content-Type"]
    assert resp.headers["Cache-Control"] == "no-cache"
