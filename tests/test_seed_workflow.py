"""The seed document's POST /prompt body, sent byte for byte (tests/data/seed_prompt_body.json is
the body as ../shared/spec/seed-api.md prints it), with tiny random files under the seed's file
names: an SDXL checkpoint, CLIP vision G, a depth Control-LoRA, ControlNetHED.pth and the two
input images. It must be accepted (200), run to execution_success over /ws and leave its saved
image and the two preprocessor previews in /history."""
import json
import os

import pytest
import torch
from PIL import Image

from models import folders
from tests.tiny_checkpoints import LAYOUT_DIR, ORACLE_DIR, write_tiny_checkpoint

pytestmark = pytest.mark.skipif(not os.path.isdir(LAYOUT_DIR), reason="oracle layouts not available")
BODY = os.path.join(os.path.dirname(__file__), "data", "seed_prompt_body.json")
SEED_DOC = next((p for p in (os.path.join(os.path.dirname(ORACLE_DIR), "spec", "seed-api.md"),
                             os.path.join(os.path.dirname(__file__), "data", "seed-api.md")) if os.path.isfile(p)), "")


def seed_body() -> bytes:
    with open(BODY, "rb") as f:
        return f.read()


def test_body_is_the_seed_documents():
    if not os.path.isfile(SEED_DOC):
        pytest.skip("seed document not available")
    doc = open(SEED_DOC, encoding="utf-8").read()
    assert seed_body().decode("utf-8") in doc[doc.index("## POST /prompt"):]


@pytest.fixture
def seed_files(base_dir):
    from models.hed import ControlNetHED
    from tiny_clip_vision import save, tiny_vision
    from tiny_controlnets import tiny_control_lora, write
    m = base_dir / "models"
    write_tiny_checkpoint(str(m / "checkpoints" / "sd_xl_base_1.0.safetensors"), "sdxl", seed=4)
    save(str(m / "clip_vision" / "clip_vision_g.safetensors"), tiny_vision("vit_bigg", seed=6))
    write(str(m / "controlnet" / "control-lora-depth-rank256.safetensors"), tiny_control_lora())
    torch.manual_seed(0)
    hed = ControlNetHED(widths=(4, 4, 8, 8, 8), depths=(2, 2, 3, 3, 3))
    (m / "annotators").mkdir(parents=True)
    torch.save(hed.state_dict(), str(m / "annotators" / "ControlNetHED.pth"))
    (base_dir / "input" / "clipspace").mkdir(parents=True)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 128), indexing="ij")
    sketch = ((((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < 0.1).float() * 255).byte()
    rgba = torch.stack([sketch, 255 - sketch, sketch // 2, torch.full_like(sketch, 255)], dim=-1).numpy()
    Image.fromarray(rgba, "RGBA").save(base_dir / "input" / "clipspace" / "clipspace-mask-1645940.7000000002.png")
    photo = (torch.stack([xx, yy, 1 - xx], dim=-1) * 255).byte().numpy()
    Image.fromarray(photo, "RGB").save(base_dir / "input" / "beijing1 (2).webp")
    folders._list_cache.clear()
    return base_dir


@pytest.mark.slow  # 26 steps at 1024x768 on a tiny SDXL: ~1-3 minutes on 2 CPU cores
async def test_seed_prompt_runs_as_written(client, seed_files):
    client_id = json.loads(seed_body())["client_id"]
    ws = await client.ws_connect(f"/ws?clientId={client_id}")
    await ws.receive_json()
    resp = await client.post("/prompt", data=seed_body(), headers={"Content-Type": "application/json"})
    data = await resp.json()
    assert resp.status == 200, data
    assert data["node_errors"] == {} and isinstance(data["number"], int)
    prompt_id = data["prompt_id"]
    events, previews = [], 0
    while True:
        msg = await ws.receive(timeout=600)
        if msg.type.name == "BINARY":
            previews += 1
            continue
        m = json.loads(msg.data)
        events.append(m["type"])
        assert m["type"] != "execution_error", m["data"]
        if m["type"] == "executing" and m["data"]["node"] is None and m["data"]["prompt_id"] == prompt_id:
            break
    await ws.close()
    assert "execution_success" in events and events.count("progress") >= 26
    history = (await (await client.get(f"/history/{prompt_id}")).json())[prompt_id]
    assert history["status"]["status_str"] == "success"
    outputs = history["outputs"]
    saved = outputs["9"]["images"][0]
    assert saved["type"] == "output" and saved["filename"].startswith("ComfyUI")
    image = await client.get(f"/view?filename={saved['filename']}&type=output")
    assert image.status == 200
    import io
    assert Image.open(io.BytesIO(await image.read())).size == (1024, 768)
    for preview_node in ("45", "48"):  # the HED and scribble maps, shown as previews
        assert outputs[preview_node]["images"][0]["type"] == "temp"
    assert "43" not in outputs  # the dangling HEDPreprocessor is not an output's input: never run
