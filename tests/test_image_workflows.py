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


async def _view(client, item):
    r = await client.get("/view", params={"filename": item["filename"], "subfolder": item["subfolder"],
                                          "type": item["type"]})
    assert r.status == 200
    return Image.open(io.BytesIO(await r.read()))


async def test_mask_nodes_build_an_alpha_channel(client):
    g = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0xFF0000}},
         "2": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 8, "height": 8}},
         "3": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 4, "height": 4}},
         "4": {"class_type": "MaskComposite", "inputs": {"destination": ["2", 0], "source": ["3", 0],
                                                         "x": 2, "y": 2, "operation": "add"}},
         "5": {"class_type": "GrowMask", "inputs": {"mask": ["4", 0], "expand": 1, "tapered_corners": False}},
         "6": {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["1", 0], "alpha": ["5", 0]}},
         "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "masks/%width%_cut"}},
         "8": {"class_type": "SplitImageWithAlpha", "inputs": {"image": ["6", 0]}},
         "9": {"class_type": "MaskToImage", "inputs": {"mask": ["8", 1]}},
         "10": {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}},
         "11": {"class_type": "MaskPreview", "inputs": {"mask": ["5", 0]}}}
    _, _, hist = await run_prompt(client, g)
    assert hist["status"]["status_str"] == "success"
    saved = hist["outputs"]["7"]["images"][0]
    assert saved == {"filename": "8_cut_00001_.png", "subfolder": "masks", "type": "output"}
    rgba = await _view(client, saved)
    assert rgba.mode == "RGBA" and rgba.size == (8, 8)
    # the 4x4 square grown by one pixel (square footprint) is cut out: transparent from 1..6
    assert rgba.getpixel((0, 0)) == (255, 0, 0, 255) and rgba.getpixel((1, 1)) == (255, 0, 0, 0)
    assert rgba.getpixel((6, 6)) == (255, 0, 0, 0) and rgba.getpixel((7, 6)) == (255, 0, 0, 255)
    grey = await _view(client, hist["outputs"]["10"]["images"][0])
    assert grey.getpixel((3, 3)) == (255, 255, 255) and grey.getpixel((0, 7)) == (0, 0, 0)
    preview = hist["outputs"]["11"]["images"][0]
    assert preview["type"] == "temp" and (await _view(client, preview)).getpixel((1, 1)) == (255, 255, 255)


async def test_image_size_drives_another_node(client):
    g = {"1": {"class_type": "EmptyImage", "inputs": {"width": 12, "height": 6, "batch_size": 2, "color": 0}},
         "2": {"class_type": "ImageRotate", "inputs": {"image": ["1", 0], "rotation": "90 degrees"}},
         "3": {"class_type": "GetImageSize", "inputs": {"image": ["2", 0]}},
         "4": {"class_type": "EmptyImage", "inputs": {"width": ["3", 0], "height": ["3", 2], "batch_size": ["3", 2],
                                                       "color": 0x00FF00}},
         "5": {"class_type": "ImageStitch", "inputs": {"image1": ["4", 0], "direction": "down",
                                                        "match_image_size": False, "spacing_width": 2,
                                                        "spacing_color": "blue", "image2": ["4", 0]}},
         "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "sized"}}}
    _, _, hist = await run_prompt(client, g)
    assert hist["status"]["status_str"] == "success"
    items = hist["outputs"]["6"]["images"]
    assert [i["filename"] for i in items] == ["sized_00001_.png", "sized_00002_.png"]
    img = await _view(client, items[1])
    assert img.size == (6, 2 + 2 + 2)  # width 6 (rotated), height = batch size 2, stitched twice + spacer
    assert img.getpixel((0, 0)) == (0, 255, 0) and img.getpixel((0, 2)) == (0, 0, 255)


async def test_saved_output_loads_back_through_annotation(client):
    _, _, first = await run_prompt(client, INVERT)
    name = first["outputs"]["3"]["images"][0]["filename"]
    g = {"1": {"class_type": "LoadImageOutput", "inputs": {"image": f"{name} [output]"}},
         "2": {"class_type": "ImageScaleToTotalPixels", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                                    "megapixels": 0.01, "resolution_steps": 4}},
         "3": {"class_type": "ImageBlur", "inputs": {"image": ["2", 0], "blur_radius": 2, "sigma": 1.0}},
         "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "again"}}}
    _, _, hist = await run_prompt(client, g)
    assert hist["status"]["status_str"] == "success"
    img = await _view(client, hist["outputs"]["4"]["images"][0])
    assert img.size == (144, 72)  # 16x8 scaled to ~0.01 MP, sides rounded to steps of 4
    assert img.getpixel((70, 30)) == (255 - 0x10, 255 - 0x20, 255 - 0x30)  # a flat image stays flat


async def test_save_outside_output_is_an_execution_error(client):
    g = {"1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": 0}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "../../escape"}}}
    _, events, hist = await run_prompt(client, g)
    assert hist["status"]["status_str"] == "error"
    err = dict(events)["execution_error"]
    assert err["node_id"] == "2" and err["node_type"] == "SaveImage"
    assert "Saving image outside the output folder is not allowed" in err["exception_message"]


async def test_get_image_size_shows_its_text_on_the_node(client):
    g = {"1": {"class_type": "EmptyImage", "inputs": {"width": 9, "height": 4, "batch_size": 3, "color": 0}},
         "7": {"class_type": "GetImageSize", "inputs": {"image": ["1", 0]}},
         "8": {"class_type": "ImageFromBatch", "inputs": {"image": ["1", 0], "batch_index": ["7", 1], "length": 5}},
         "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}}
    _, events, hist = await run_prompt(client, g)
    assert hist["status"]["status_str"] == "success"
    assert len(hist["outputs"]["9"]["images"]) == 1  # index 4 clamped to the last of 3
    frames = [d for t, d in events if t == "binary" and d[:4] == (3).to_bytes(4, "big")]
    assert len(frames) == 1
    body = frames[0][4:]
    n = int.from_bytes(body[:4], "big")
    assert body[4:4 + n] == b"7" and body[4 + n:] == b"width: 9, height: 4\n batch size: 3"
