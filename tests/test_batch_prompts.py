"""--batch-prompts: queued prompts that differ only in seed and prompt text run their UNet calls
as one batch, and each prompt's result is the one it gives alone.

The model-call rendezvous is checked directly (models/sampling/prompt_batching.py, with a fake
model that records its batch sizes), and end to end over HTTP with a tiny SD1 checkpoint
against a server without the flag."""
import asyncio
import json
import os
import threading

import pytest
import torch

from models import folders
from models.sampling import prompt_batching
from tests.tiny_checkpoints import LAYOUT_DIR, write_tiny_checkpoint


# -- the rendezvous, with a fake model -----------------------------------------------------

class FakeModel:
    """apply_model(x, sigma, c_crossattn=...) = x * sigma + mean(context): per-row, so a batch
    gives each row what it gives alone."""

    def __init__(self):
        self.batch_sizes = []
        self.lock = threading.Lock()

    def apply_model(self, x, sigma, c_crossattn=None, transformer_options=None):
        with self.lock:
            self.batch_sizes.append(x.shape[0])
        return x * sigma.reshape(-1, 1) + c_crossattn.mean(dim=(1, 2)).reshape(-1, 1)


def sample_steps(model, seed, steps):
    """A toy sampling loop: `steps` model calls, each on cond+uncond (batch 2)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, generator=g)
    context = torch.randn(2, 5, 7, generator=g)
    for i in range(steps):
        sigma = torch.full((2,), 1.0 / (i + 1))
        out = prompt_batching.apply_model(model, torch.cat([x, x]), sigma,
                                          {"c_crossattn": context, "transformer_options": {"cond_or_uncond": [0, 1]}})
        x = x + 0.1 * (out[:1] - out[1:])
    return x


def run_group(model, seeds, steps, start_delays=None, patchers=None):
    group = prompt_batching.Group()
    members = [group.add_member(str(s)) for s in seeds]
    results, errors = {}, []

    def main(member, seed, steps_, delay, patcher):
        try:
            with member.running():
                if delay:  # busy with other nodes first (text encoding, loading...)
                    torch.randn(200, 200) @ torch.randn(200, 200)
                with prompt_batching.session(patcher) if patcher is not None else _null():
                    results[seed] = sample_steps(model, seed, steps_)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=main, args=(m, s, st, (start_delays or {}).get(s, 0),
                                                   (patchers or {}).get(s)))
               for m, s, st in zip(members, seeds, steps)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert all(not t.is_alive() for t in threads), "a member hung"
    return group, results


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_calls_of_concurrent_prompts_run_as_one_batch_and_match_serial():
    seeds, steps = [11, 12, 13, 14], [4, 4, 4, 4]
    serial = {s: sample_steps(FakeModel(), s, 4) for s in seeds}
    model = FakeModel()
    group, batched = run_group(model, seeds, steps, start_delays={13: 1})
    for s in seeds:
        torch.testing.assert_close(batched[s], serial[s], rtol=0, atol=1e-6)
    # 4 prompts x 4 steps x (cond+uncond) rows in 4 forwards of 8 rows
    assert sorted(model.batch_sizes) == [8, 8, 8, 8]
    assert group.batches == [4, 4, 4, 4]


def test_prompts_with_fewer_steps_leave_the_batch_and_the_rest_go_on():
    model = FakeModel()
    group, batched = run_group(model, [1, 2, 3], [2, 5, 3])
    for s, n in ((1, 2), (2, 5), (3, 3)):
        torch.testing.assert_close(batched[s], sample_steps(FakeModel(), s, n), rtol=0, atol=1e-6)
    assert model.batch_sizes == [6, 6, 4, 2, 2]


class FakePatcher:
    """The shared-weights side of a ModelPatcher: a WeightPatcher-like `weights` and a LoRA set."""

    def __init__(self, weights, patches, log):
        self.weights, self.weight_patches, self.log = weights, patches, log


class FakeWeights:
    @staticmethod
    def signature(patches):
        return tuple(patches)


def test_members_with_another_lora_set_never_sample_the_shared_weights_at_once():
    weights, active, overlaps = FakeWeights(), [], []
    model = FakeModel()
    original_apply = model.apply_model

    def apply_model(x, sigma, **kw):
        # every row of a batch must come from members with the same LoRA set
        overlaps.append(len(set(active)) > 1)
        return original_apply(x, sigma, **kw)
    model.apply_model = apply_model

    real_session = prompt_batching.session

    def session(patcher):
        class _S:
            def __enter__(self_):
                self_.cm = real_session(patcher)
                self_.cm.__enter__()
                active.append(tuple(patcher.weight_patches))

            def __exit__(self_, *exc):
                active.remove(tuple(patcher.weight_patches))
                return self_.cm.__exit__(*exc)
        return _S()

    patchers = {1: FakePatcher(weights, ["lora_a"], None), 2: FakePatcher(weights, ["lora_b"], None),
                3: FakePatcher(weights, ["lora_a"], None)}
    original = prompt_batching.session
    prompt_batching.session = session
    try:
        group, batched = run_group(model, [1, 2, 3], [3, 3, 3], patchers=patchers)
    finally:
        prompt_batching.session = original
    assert overlaps and not any(overlaps)
    for s in (1, 2, 3):
        torch.testing.assert_close(batched[s], sample_steps(FakeModel(), s, 3), rtol=0, atol=1e-6)
    assert max(group.batches) == 2  # the two lora_a prompts still shared their batches


def test_a_failing_batch_fails_each_member_and_the_group_ends():
    class Broken(FakeModel):
        def apply_model(self, x, sigma, **kw):
            raise torch.OutOfMemoryError("no room")
    group = prompt_batching.Group()
    members = [group.add_member() for _ in range(3)]
    raised = []

    def main(m):
        with m.running():
            try:
                sample_steps(Broken(), 1, 2)
            except torch.OutOfMemoryError:
                raised.append(True)
    threads = [threading.Thread(target=main, args=(m,)) for m in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert raised == [True, True, True] and group.live() == 0


def test_calls_that_cannot_be_batched_run_alone():
    model = FakeModel()
    group = prompt_batching.Group()
    members = [group.add_member() for _ in range(2)]

    def main(m, patched):
        with m.running():
            x = torch.ones(2, 3)
            options = {"patches": {"attn1_patch": [object()]}} if patched else {}
            prompt_batching.apply_model(model, x, torch.ones(2), {"c_crossattn": torch.ones(2, 4, 4),
                                                                  "transformer_options": options})
    threads = [threading.Thread(target=main, args=(m, i == 0)) for i, m in enumerate(members)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert model.batch_sizes == [2, 2]


def test_which_prompts_may_share_a_group():
    from executor.prompt_groups import batch_signature
    base = batch_signature(workflow(1, "a cat"))
    other_cfg = workflow(2, "a dog")
    other_cfg["5"]["inputs"].update(cfg=3.5, denoise=0.8)
    assert batch_signature(other_cfg) == base
    for node, name, value in (("1", "ckpt_name", "other.safetensors"), ("4", "width", 128), ("5", "steps", 9),
                              ("5", "sampler_name", "euler")):
        changed = workflow(1, "a cat")
        changed[node]["inputs"][name] = value
        assert batch_signature(changed) != base, name
    rewired = workflow(1, "a cat")
    rewired["5"]["inputs"]["positive"] = ["3", 0]
    assert batch_signature(rewired) != base and batch_signature({"1": "junk"}) is None


def test_outside_a_group_calls_are_plain():
    model = FakeModel()
    out = prompt_batching.apply_model(model, torch.ones(2, 3), torch.ones(2), {"c_crossattn": torch.zeros(2, 1, 1)})
    assert torch.equal(out, torch.ones(2, 3)) and model.batch_sizes == [2]


# -- over HTTP with a tiny SD1 checkpoint ---------------------------------------------------

needs_layouts = pytest.mark.skipif(not os.path.isdir(LAYOUT_DIR), reason="oracle layouts not available")


def workflow(seed, text, sampler="euler_ancestral", size=64):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                  "latent_image": ["4", 0], "seed": seed, "steps": 3, "cfg": 6.0,
                                                  "sampler_name": sampler, "scheduler": "karras", "denoise": 1.0}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": f"b{seed}"}},
    }


GATE = threading.Event()


class Gate:
    """An output node that holds the worker until the test has queued everything."""
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        assert GATE.wait(60)
        return {}


@pytest.fixture
def gate():
    from nodes import registry
    registry.register({"T_BatchGate": Gate}, python_module="custom_nodes.test")
    GATE.clear()
    yield
    GATE.set()
    registry.NODE_CLASS_MAPPINGS.pop("T_BatchGate", None)


def blocker():
    """Another shape of prompt: while it waits at the gate, the prompts posted after it queue up."""
    return {"1": {"class_type": "T_BatchGate", "inputs": {}}}


async def queue_all(client, prompts, client_id="farm"):
    """POST every prompt, then wait on /ws until each has finished; [history entry], [events]."""
    ws = await client.ws_connect(f"/ws?clientId={client_id}")
    await ws.receive_json()
    ids = []
    for p in prompts:
        resp = await client.post("/prompt", data=json.dumps({"prompt": p, "client_id": client_id}))
        body = await resp.json()
        assert resp.status == 200, body
        ids.append(body["prompt_id"])
    GATE.set()
    waiting, events = set(ids), []
    while waiting:
        msg = await asyncio.wait_for(ws.receive(), 120)
        if msg.type.name != "TEXT":
            continue
        m = json.loads(msg.data)
        events.append(m)
        if m["type"] == "executing" and m["data"]["node"] is None:
            waiting.discard(m["data"]["prompt_id"])
    await ws.close()
    history = await (await client.get("/history")).json()
    return [history[i] for i in ids], events


def latent_of(base_dir, entry):
    from safetensors.torch import load_file
    out = entry["outputs"]["7"]["latents"][0]
    return load_file(str(base_dir / "output" / out["subfolder"] / out["filename"]))["latent_tensor"]


@needs_layouts
@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m_sde_gpu"])
async def test_queued_prompts_batch_over_http_and_each_matches_its_serial_run(aiohttp_client, make_args, base_dir,
                                                                              gate, sampler):
    from server.app import create_app
    from server.app_keys import WORKER
    write_tiny_checkpoint(str(base_dir / "models" / "checkpoints" / "tiny_sd1.safetensors"), "sd1", seed=3)
    folders._list_cache.clear()
    prompts = [blocker()] + [workflow(100 + i, f"a photo of cat number {i}", sampler) for i in range(4)]

    batched_app = create_app(make_args("--batch-prompts"))
    batched = await aiohttp_client(batched_app)
    entries, events = await queue_all(batched, prompts)
    assert all(e["status"]["status_str"] == "success" for e in entries), [e["status"] for e in entries]
    batched_latents = [None] + [latent_of(base_dir, e) for e in entries[1:]]
    stats = batched_app[WORKER].batch_stats
    for _ in range(100):  # the group's figures are filed just after its last prompt reports
        if stats["prompts"] == 5:
            break
        await asyncio.sleep(0.05)
    # the blocker alone, then the four others as one group: 3 steps, each one UNet batch of 4
    assert stats["groups"] == 2 and stats["prompts"] == 5 and stats["largest_batch"] == 4, stats
    assert stats["model_batches"] == 3, stats
    # each prompt reports its own progress (3 steps) under its own id
    for e in entries[1:]:
        pid = e["prompt"][1]
        steps = [m["data"]["value"] for m in events if m["type"] == "progress" and m["data"]["prompt_id"] == pid]
        assert steps == [1, 2, 3], (pid, steps)

    serial = await aiohttp_client(create_app(make_args()))
    GATE.clear()
    serial_entries, _ = await queue_all(serial, prompts, client_id="one-by-one")
    for got, entry in zip(batched_latents[1:], serial_entries[1:]):
        alone = latent_of(base_dir, entry)
        # a UNet batch of 8 rounds differently from batches of 2 (~1e-6 per call); cfg 6 and the
        # random tiny weights amplify that over the steps, but only that
        rel_rms = ((got - alone).pow(2).mean() / alone.pow(2).mean()).sqrt().item()
        print("batched vs alone: rel_rms", rel_rms, "max", (got - alone).abs().max().item())
        assert rel_rms < 1e-4, rel_rms
    assert not torch.equal(batched_latents[1], batched_latents[2])  # own seeds, own noise


@needs_layouts
async def test_interrupting_one_prompt_of_a_group_leaves_the_others(aiohttp_client, make_args, base_dir, gate):
    from server.app import create_app
    write_tiny_checkpoint(str(base_dir / "models" / "checkpoints" / "tiny_sd1.safetensors"), "sd1", seed=3)
    folders._list_cache.clear()
    client = await aiohttp_client(create_app(make_args("--batch-prompts")))
    ws = await client.ws_connect("/ws?clientId=farm")
    await ws.receive_json()
    ids = []
    await client.post("/prompt", data=json.dumps({"prompt": blocker(), "client_id": "farm"}))
    for i in range(3):
        p = workflow(200 + i, f"prompt {i}")
        p["5"]["inputs"]["steps"] = 12
        resp = await client.post("/prompt", data=json.dumps({"prompt": p, "client_id": "farm"}))
        ids.append((await resp.json())["prompt_id"])
    GATE.set()
    victim, done, interrupted = ids[1], set(), False
    while not done.issuperset(ids):
        m = json.loads((await asyncio.wait_for(ws.receive(), 120)).data)
        if not interrupted and m["type"] == "progress" and m["data"]["prompt_id"] == victim:
            running = (await (await client.get("/queue")).json())["queue_running"]
            assert {r[1] for r in running} == set(ids)  # the whole group shows as running
            await client.post("/interrupt", data=json.dumps({"prompt_id": victim}))
            interrupted = True
        if m["type"] == "executing" and m["data"]["node"] is None:
            done.add(m["data"]["prompt_id"])
    history = await (await client.get("/history")).json()
    status = {i: history[i]["status"] for i in ids}
    assert [m[0] for m in status[victim]["messages"]][-1] == "execution_interrupted"
    assert all(status[i]["status_str"] == "success" for i in ids if i != victim), status


def test_batching_needs_the_classic_cache(make_args):
    """Members share loaded models through the classic cache; with another cache policy the
    flag falls back to one prompt at a time."""
    from server.app import create_app
    from server.app_keys import WORKER
    assert create_app(make_args("--batch-prompts"))[WORKER].batch_prompts is True
    assert create_app(make_args())[WORKER].batch_prompts is False
    for flags in (("--cache-none",), ("--cache-lru", "10")):
        assert create_app(make_args("--batch-prompts", *flags))[WORKER].batch_prompts is False
