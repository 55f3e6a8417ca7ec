"""Several prompts' UNet calls run as one batch (--batch-prompts).

The worker runs a group of compatible queued prompts at once, one thread per prompt (a
Member). The threads take turns: a member runs code only while it holds the group's lock,
so the executor, the caches and the models see one prompt at a time as in serial execution.
A member gives the lock up only while it waits here:
  - in `apply_model`, for its model call to be batched with the other members' calls;
  - in `session`, for the shared UNet weights to carry its own LoRA set (the weights are
    patched in place, so members with another set wait until the current sessions end).
When no other member is busy (all wait here or are done), the member about to wait runs every
pending model call itself — compatible calls concatenated along the batch dimension, in
chunks that fit the device's free memory — and hands each member its slice. Members that
join late (out of phase) batch too: every batch element carries its own sigma.

Each prompt keeps its own seed, initial noise, sampler state, noise generator and progress
events, so its image is the one it gives alone, up to the batch's rounding.
Outside a group (no member bound to this thread) both entry points are plain calls.
"""
from __future__ import annotations

import contextlib
import logging
import threading

import torch

log = logging.getLogger(__name__)

_local = threading.local()

BUSY, WAITING, DONE = "busy", "waiting", "done"
# transformer_options keys that describe one call; anything else (patches) rules batching out
_PER_CALL_OPTIONS = {"cond_or_uncond", "uuids", "sigmas", "sample_sigmas"}


class Member:
    """One prompt of a group, run by one thread."""

    def __init__(self, group: "Group", name: str):
        self.group = group
        self.name = name
        self.state = BUSY  # busy from the start: the group waits for it to reach its first call

    @contextlib.contextmanager
    def running(self):
        """Hold the group's lock for the member's whole run (this thread's code)."""
        g = self.group
        with g.cv:
            _local.member = self
            try:
                yield self
            finally:
                _local.member = None
                self.state = DONE
                g.take_in_newcomers()  # this member may still be among them
                g.members.remove(self)
                g.settle()
                g.cv.notify_all()


class _Call:
    __slots__ = ("member", "model", "x", "sigma", "kwargs", "key", "result", "error")

    def __init__(self, member, model, x, sigma, kwargs, key):
        self.member, self.model, self.x, self.sigma, self.kwargs, self.key = member, model, x, sigma, kwargs, key
        self.result = self.error = None


class Group:
    def __init__(self):
        self.cv = threading.Condition(threading.RLock())
        self.members: list[Member] = []
        self.pending: list[_Call] = []
        self.sessions: dict[int, list] = {}  # id(shared weights) -> [patch signature, count]
        self.batches: list[int] = []          # sizes (calls) of the model batches run: stats and tests
        self._joining: list[Member] = []
        self._joining_lock = threading.Lock()

    def add_member(self, name: str = "") -> Member:
        """A new (busy) member. Called by the worker while members run, so it takes only the small
        lock: the group's lock may be held by a member for a long while."""
        m = Member(self, name)
        with self._joining_lock:
            self._joining.append(m)
        return m

    def live(self) -> int:
        with self._joining_lock:
            return len(self.members) + len(self._joining)

    def take_in_newcomers(self) -> None:
        """Members the worker added since the last look join the list (busy, until they wait)."""
        with self._joining_lock:
            self.members.extend(self._joining)
            self._joining.clear()

    def _others_busy(self, me: Member | None) -> bool:
        self.take_in_newcomers()
        return any(m.state == BUSY and m is not me for m in self.members)

    def settle(self, me: Member | None = None) -> None:
        """Called (lock held) by a member about to wait or finish: if nobody else can still add
        a model call, run the pending ones now."""
        if self.pending and not self._others_busy(me):
            self._run_pending()

    def _run_pending(self) -> None:
        calls, self.pending = self.pending, []
        groups: dict = {}
        for c in calls:
            groups.setdefault(c.key, []).append(c)
        for same in groups.values():
            for chunk in _chunks_that_fit(same):
                self.batches.append(len(chunk))
                try:
                    outputs = _batched_forward(chunk)
                except BaseException as e:  # every member of the chunk sees the failure (OOM included)
                    for c in chunk:
                        c.error = e
                else:
                    for c, out in zip(chunk, outputs):
                        c.result = out
        for c in calls:
            c.member.state = BUSY  # served: runnable again, so the next round waits for it
        self.cv.notify_all()

    def wait_for(self, me: Member, ready) -> None:
        """Wait (lock released) until ready() holds, running pending calls when it is our turn."""
        while not ready():
            me.state = WAITING
            self.settle(me)
            if ready():
                break
            self.cv.wait()
        me.state = BUSY


def current() -> Member | None:
    return getattr(_local, "member", None)


# -- the shared weights' LoRA set ------------------------------------------------------------

@contextlib.contextmanager
def session(patcher):
    """Around one sampling run: wait until the shared weights may carry this patcher's weight
    patches (no other member samples the same model with another set)."""
    me = current()
    weights = getattr(patcher, "weights", None)
    if me is None or weights is None:
        yield
        return
    g = me.group
    key = id(weights)
    signature = weights.signature(getattr(patcher, "weight_patches", []))
    with g.cv:
        g.wait_for(me, lambda: key not in g.sessions or g.sessions[key][0] == signature)
        entry = g.sessions.setdefault(key, [signature, 0])
        entry[1] += 1
    try:
        yield
    finally:
        with g.cv:
            entry[1] -= 1
            if entry[1] == 0:
                del g.sessions[key]
                for m in g.members:  # members waiting for the weights may now go
                    if m.state == WAITING and m is not me:
                        m.state = BUSY
                g.cv.notify_all()


# -- model calls ---------------------------------------------------------------------------

def _batch_key(model, x: torch.Tensor, kwargs: dict):
    """What calls must share to run as one batch; None when this call cannot be batched."""
    parts = []
    for name, value in sorted(kwargs.items()):
        if value is None:
            parts.append((name, None))
        elif torch.is_tensor(value):
            if value.shape[:1] != x.shape[:1]:
                return None
            parts.append((name, tuple(value.shape[1:]), value.dtype, value.device))
        elif name == "transformer_options" and isinstance(value, dict):
            if any(k not in _PER_CALL_OPTIONS and v for k, v in value.items()):
                return None  # attention / block patches see cond_or_uncond: keep them alone
        else:
            return None  # a ControlNet's control dict, or anything else per call
    return id(model), tuple(x.shape[1:]), x.dtype, x.device, tuple(parts)


def apply_model(model, x: torch.Tensor, sigma: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """model.apply_model(x, sigma, **kwargs), batched with the group's other members' calls."""
    me = current()
    key = _batch_key(model, x, kwargs) if me is not None else None
    if key is None:
        return model.apply_model(x, sigma, **kwargs)
    g = me.group
    call = _Call(me, model, x, sigma, kwargs, key)
    with g.cv:
        g.pending.append(call)
        g.wait_for(me, lambda: call.result is not None or call.error is not None)
    if call.error is not None:
        raise call.error
    return call.result


def _chunks_that_fit(calls: list) -> list[list]:
    """Split calls so that each batch's working memory fits what the device has free."""
    first = calls[0]
    required = getattr(first.model, "memory_required", None)
    if required is None or len(calls) == 1:
        return [calls]
    from models import devices
    free = devices.resolve(first.x.device).free_memory()
    chunks, current_chunk, rows = [], [], 0
    for c in calls:
        n = c.x.shape[0]
        if current_chunk and required([rows + n] + list(c.x.shape[1:])) * 1.5 > free:
            chunks.append(current_chunk)
            current_chunk, rows = [], 0
        current_chunk.append(c)
        rows += n
    chunks.append(current_chunk)
    return chunks


def _batched_forward(calls: list) -> list[torch.Tensor]:
    if len(calls) == 1:
        c = calls[0]
        return [c.model.apply_model(c.x, c.sigma, **c.kwargs)]
    first = calls[0]
    x = torch.cat([c.x for c in calls])
    sigma = torch.cat([c.sigma.reshape(-1).expand(c.x.shape[0]) for c in calls])
    kwargs = {}
    for name, value in first.kwargs.items():
        if torch.is_tensor(value):
            kwargs[name] = torch.cat([c.kwargs[name] for c in calls])
        elif name == "transformer_options":
            options = dict(value)
            options["cond_or_uncond"] = [i for c in calls for i in c.kwargs[name].get("cond_or_uncond", [])]
            options["uuids"] = [u for c in calls for u in c.kwargs[name].get("uuids", [])]
            options["sigmas"] = sigma
            kwargs[name] = options
        else:
            kwargs[name] = value
    out = first.model.apply_model(x, sigma, **kwargs)
    return list(out.split([c.x.shape[0] for c in calls]))
