"""Small node classes for executor tests (registered per test by the `test_nodes` fixture)."""
import asyncio
import time

from executor.graph_utils import ExecutionBlocker, GraphBuilder
from models.progress import ProgressBar, check_interrupted

CALLS: list = []


class IntConst:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": -100, "max": 1000})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value):
        CALLS.append(("IntConst", value))
        return (value,)


class Add:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT",), "b": ("INT", {"default": 1})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, a, b):
        CALLS.append(("Add", a, b))
        return (a + b,)


class ShowInt:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, value):
        CALLS.append(("ShowInt", value))
        return {"ui": {"text": [str(value)]}}


class Fail:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value):
        raise ValueError(f"bad value {value}")


class Slow:
    """Reports progress each tick and polls the interrupt flag, like a sampler."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",), "ticks": ("INT", {"default": 3})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value, ticks):
        bar = ProgressBar(ticks)
        for _ in range(ticks):
            time.sleep(0.05)
            bar.update(1)
        return (value,)


class LazyPick:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"use_a": ("BOOLEAN", {"default": True}),
                             "a": ("INT", {"lazy": True}), "b": ("INT", {"lazy": True})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def check_lazy_status(self, use_a, a=None, b=None):
        return ["a"] if use_a else ["b"]

    def run(self, use_a, a=None, b=None):
        return (a if use_a else b,)


class Expand:
    """Expands into IntConst -> Add(+10) built with GraphBuilder."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value):
        g = GraphBuilder()
        c = g.node("IntConst", value=10)
        s = g.node("Add", a=value, b=c.out(0))
        return {"result": (s.out(0),), "expand": g.finalize()}


class Block:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",), "message": ("STRING", {"default": ""})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value, message):
        return (ExecutionBlocker(message or None),)


class ListOut:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"n": ("INT",)}}
    RETURN_TYPES = ("INT",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "run"

    def run(self, n):
        return (list(range(n)),)


class SumList:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"values": ("INT",)}}
    RETURN_TYPES = ("INT",)
    INPUT_IS_LIST = True
    FUNCTION = "run"

    def run(self, values):
        return (sum(values),)


class AsyncDouble:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    async def run(self, value):
        await asyncio.sleep(0.05)
        return (value * 2,)


class Checked:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def VALIDATE_INPUTS(cls, value):
        return True if value is None or value % 2 == 0 else "must be even"

    def run(self, value):
        return (value,)


class Changing:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def IS_CHANGED(cls, value):
        return float("nan")

    def run(self, value):
        CALLS.append(("Changing", value))
        return (value,)


class Counter:
    """Stateful: counts its own calls on the instance (node instances are cached per id)."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def IS_CHANGED(cls, value):
        return float("nan")

    def run(self, value):
        self.calls = getattr(self, "calls", 0) + 1
        return (self.calls,)


class Inspect:
    """Shows what the executor passed: hidden inputs, undeclared linked inputs, raw links."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)},
                "optional": {"raw": ("INT", {"rawLink": True})},
                "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID", "extra_pnginfo": "EXTRA_PNGINFO"}}
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, value, prompt, unique_id, extra_pnginfo, raw=None, **rest):
        return {"ui": {"value": [value], "unique_id": [unique_id], "prompt_nodes": [sorted(prompt)],
                       "extra_pnginfo": [extra_pnginfo], "raw": [raw], "rest": [sorted(rest.items())]}}


class LoopForever:
    """Expands into a generated node that feeds itself: a cycle created at run time."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value):
        g = GraphBuilder()
        a = g.node("Add", id="a", b=1)
        a.set_input("a", a.out(0))
        return {"result": (a.out(0),), "expand": g.finalize()}


MAPPINGS = {f"T_{c.__name__}": c for c in (IntConst, Add, ShowInt, Fail, Slow, LazyPick, Expand, Block, ListOut,
                                           SumList, AsyncDouble, Checked, Changing, Counter, Inspect,
                                           LoopForever)}
# Expand's GraphBuilder uses the plain names; register both.
MAPPINGS.update({"IntConst": IntConst, "Add": Add})
