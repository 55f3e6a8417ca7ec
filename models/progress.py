"""Interruption flag and progress reporting shared by every long operation.

Node code, samplers and model loaders live below the executor, so they cannot
call it. Instead they poll `check_interrupted()` and report through
`report_progress()`; the executor installs the hook that turns reports into
WebSocket `progress` events and sets the flag when a user interrupts.
"""
from __future__ import annotations

import threading
from typing import Callable, Optional


class InterruptedError_(Exception):
    """Raised inside a running node when the user interrupts the job."""


# ComfyUI's name for it; custom nodes catch `comfy.model_management.InterruptProcessingException`.
InterruptProcessingException = InterruptedError_

_interrupt = threading.Event()
# With --batch-prompts several prompts run at once, one thread each: such a thread is *bound*
# to its own interrupt flag and progress hook (bind_thread), and sees the global flag as well.
_local = threading.local()


def bind_thread(interrupt: threading.Event | None) -> None:
    """Give this thread its own interrupt flag and progress hook (None: back to the globals)."""
    _local.interrupt = interrupt
    _local.hook = None


def _bound_flag() -> threading.Event | None:
    return getattr(_local, "interrupt", None)


def thread_bound() -> bool:
    """Whether this thread runs one prompt of a --batch-prompts group."""
    return _bound_flag() is not None


def request_interrupt(value: bool = True) -> None:
    """Set the global flag, or clear this thread's flag (the global one when unbound)."""
    if value:
        _interrupt.set()
    elif _bound_flag() is not None:
        _bound_flag().clear()  # a prompt starting in a group must not clear the others' interrupt
    else:
        _interrupt.clear()


def interrupt_requested() -> bool:
    bound = _bound_flag()
    return _interrupt.is_set() or (bound is not None and bound.is_set())


def check_interrupted() -> None:
    """Raise InterruptProcessingException (clearing the flag) if an interrupt is pending.
    A bound thread leaves the global flag set for the other prompts of its group."""
    bound = _bound_flag()
    if bound is not None:
        if bound.is_set() or _interrupt.is_set():
            bound.clear()
            raise InterruptProcessingException()
        return
    if _interrupt.is_set():
        _interrupt.clear()
        raise InterruptProcessingException()


# hook(value, total, preview, node_id) -> None; preview is None or
# ("JPEG"|"PNG", PIL.Image, max_size)
ProgressHook = Callable[[float, float, Optional[tuple], Optional[str]], None]
_hook: Optional[ProgressHook] = None


def set_progress_hook(hook: Optional[ProgressHook]) -> None:
    global _hook
    if _bound_flag() is not None:
        _local.hook = hook
    else:
        _hook = hook


def get_progress_hook() -> Optional[ProgressHook]:
    if _bound_flag() is not None:
        return _local.hook
    return _hook


def report_progress(value: float, total: float, preview=None, node_id: str | None = None,
                    legacy_event: bool = True) -> None:
    """Report progress of the current node; also the place where interrupts are noticed.
    legacy_event=False updates only the per-node state (V3 set_progress), no `progress` event."""
    check_interrupted()
    hook = get_progress_hook()
    if hook is not None:
        if legacy_event:
            hook(value, total, preview, node_id)
        else:
            hook(value, total, preview, node_id, send_progress=False)


class ProgressBar:
    """ComfyUI's comfy.utils.ProgressBar: `update(n)`, `update_absolute(value, total, preview)`."""

    def __init__(self, total: int, node_id: str | None = None):
        self.total = total
        self.current = 0
        self.node_id = node_id

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        if value > self.total:
            value = self.total
        self.current = value
        report_progress(self.current, self.total, preview, self.node_id)

    def update(self, value):
        self.update_absolute(self.current + value)
