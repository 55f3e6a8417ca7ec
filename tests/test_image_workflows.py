"""Image workflows end to end over HTTP and /ws: the exact event sequence of API.md §10.5,
history, /view of the result, uploads used by LoadImage, cached reruns."""
import io
import json

import aiohttp
import numpy as np
from PIL import Image

from wsclient import run_prompt

INVERT = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": 0x102030}},
          "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
          "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}}}


async def test_exact_event_sequence_for_an_image_workflow(client):
    ws = await client.ws_connect("/ws?clientId=seq")
    greeting = await ws.receive_json()
    assert greeting["data"]["sid"] == "seq"
    r = await client.post("/prompt", data=json.dumps({"prompt": INVERT, "client_id": "seq",
                                                      "extra_data": {"extra_pnginfo": {"workflow": {"id": "w1"}}}}))
    pid = (await r.json())["prompt_id"]
    events = []
    while True:
        m = await ws.receive_json()
        events.append((m["type"], m["data"]))
        if m["type"] == "executing" and m["data"]["node"] is None:
            break
    await ws.close()
    kinds = [t for t, _ in events]
    assert kinds == ["status", "status", "execution_start", "execution_cached",
                     "progress_state", "executing", "progress_state",
                     "progress_state", "executing", "progress_state",
                     "progress_state", "executing", "executed", "progress_state",
                     "execution_success", "status", "executing"]
    assert events[0][1] == {"status": {"exec_info": {"queue_remaining": 1}}}
    assert events[-2][1] == {"status": {"exec_info": {"queue_remaining": 0}}}
    assert [d["node"] for t, d in events if t == "executing"] == ["1", "2", "3", None]
    assert events[-1][1] == {"node": None, "prompt_id": pid}
    executed = dict(events)["executed"]
    assert executed == {"node": "3", "display_node": "3", "prompt_id": pid,
                        "output": {"images": [{"filename": "inv_00001_.png", "subfolder": "", "type": "output"}]}}
    state = events[4][1]["nodes"]["1"]
    assert state == {"value": 0.0, "max": 1.0, "state": "running", "node_id": "1", "prompt_id": pid,
                     "display_node_id": "1", "parent_node_id": None, "real_node_id": "1"}
    hist = (await (await client.get(f"/history/{pid}")).json())[pid]
    assert hist["outputs"]["3"]["images"][0]["filename"] == "inv_00001_.png"
    png = await (await client.get("/view?filename=inv_00001_.png&type=output")).read()
    img = Image.open(io.BytesIO(png))
    assert img.size == (16, 8) and img.getpixel((0, 0)) == (255 - 0x10, 255 - 0x20, 255 - 0x30)
    assert json.loads(img.text["workflow"]) == {"id": "w1"}
    assert json.loads(img.text["prompt"])["2"]["class_type"] == "ImageInvert"


async def test_cached_rerun_replays_outputs_without_new_files(client, base_dir):
    await run_prompt(client, INVERT)
    _, events, hist = await run_prompt(client, INVERT)
    assert [t for t, _ in events].count("executing") == 1  # only the final {node: null}
    executed = [d for t, d in events if t == "executed"]
    assert executed[0]["output"]["images"][0]["filename"] == "inv_00001_.png"
    assert sorted(p.name for p in (base_dir / "output").iterdir() if p.suffix == ".png") == ["inv_00001_.png"]


async def test_uploaded_image_through_scale_and_preview(client):
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 20, 3), 200, dtype=np.uint8)).save(buf, format="PNG")
    f = aiohttp.FormData()
    f.add_field("image", buf.getvalue(), filename="up.png", content_type="image/png")
    name = (await (await client.post("/upload/image", data=f)).json())["name"]
    g = {"1": {"class_type": "LoadImage", "inputs": {"image": name, "choose file to upload": "image"}},
         "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bilinear",
                                                       "width": 10, "height": 0, "crop": "disabled"}},
         "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
         "4": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 1]}},
         "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}}}
    _, _, hist = await run_prompt(client, g)
    assert hist["status"]["status_str"] == "success"
    item = hist["outputs"]["3"]["images"][0]
    assert item["type"] == "temp"
    data = await (await client.get(f"/view?filename={item['filename']}&type=temp")).read()
    assert Image.open(io.BytesIO(data)).size == (10, 6)


async def test_missing_input_file_is_a_validation_error(client):
    g = {"1": {"class_type": "LoadImage", "inputs": {"image": "nope.png"}},
         "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    r = await client.post("/prompt", data=json.dumps({"prompt": g}))
    body = await r.json()
    assert r.status == 400
    # LoadImage validates `image` itself, so ComfyUI reports its message, not a combo error
    err = body["node_errors"]["1"]["errors"][0]
    assert err["type"] == "custom_validation_failed" and err["details"] == "image - Invalid image file: nope.png"
