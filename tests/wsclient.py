"""Test helper: run a prompt over HTTP and collect its WebSocket events."""
import asyncio
import json


async def run_prompt(client, prompt, client_id="tester", extra=None, timeout=30.0):
    """POST the prompt with a connected socket; return (response json, [(type, data)...], history entry)."""
    ws = await client.ws_connect(f"/ws?clientId={client_id}")
    await ws.receive_json()  # greeting
    body = {"prompt": prompt, "client_id": client_id, **(extra or {})}
    resp = await client.post("/prompt", data=json.dumps(body))
    data = await resp.json()
    if resp.status != 200:
        await ws.close()
        return data, [], None
    prompt_id = data["prompt_id"]
    events = []
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout)
        if msg.type.name != "TEXT":
            events.append(("binary", msg.data))
            continue
        m = json.loads(msg.data)
        events.append((m["type"], m["data"]))
        if m["type"] == "executing" and m["data"].get("prompt_id") == prompt_id and m["data"]["node"] is None:
            break
    await ws.close()
    history = (await (await client.get(f"/history/{prompt_id}")).json()).get(prompt_id)
    return data, events, history


def types(events, prompt_id=None):
    return [t for t, d in events if t != "binary"]
