"""The prompt queue and the history.

A job is the tuple `(number, prompt_id, prompt, extra_data, outputs_to_execute, sensitive)`;
the pending queue is a min-heap on it (priority, then prompt id), as in ComfyUI.
`on_change` is called whenever the queue changes, so the server can broadcast `status`.
The persistent form lives behind `store` (see executor/store.py); memory is the cache.
"""
from __future__ import annotations

import copy
import heapq
import logging
import threading
from typing import Callable, NamedTuple, Optional

from executor.store import MemoryStore, interrupted_entry

log = logging.getLogger(__name__)


class ExecutionStatus(NamedTuple):
    status_str: str  # "success" | "error"
    completed: bool
    messages: list


def public_job(item) -> list:
    """The 5-element form clients see (the sensitive slot removed)."""
    return list(item[:5])


class PromptQueue:
    def __init__(self, on_change: Callable[[], None] | None = None, max_history: int = 10000, store=None):
        self.on_change = on_change or (lambda: None)
        self.max_history = max_history
        self.store = store or MemoryStore()
        self._keys: dict[int, int] = {}  # id(job tuple) -> store key
        self.mutex = threading.RLock()
        self.not_empty = threading.Condition(self.mutex)
        self.task_counter = 0
        self.queue: list[tuple] = []
        self.currently_running: dict[int, tuple] = {}
        self.running_keys: dict[int, int | None] = {}
        self.history: dict[str, dict] = {}
        self.flags: dict = {}
        self.number_counter = 0  # priority counter for POST /prompt without `number`
        self._restore()

    def _restore(self) -> None:
        """Re-queue what was pending (same numbers, ids, extra_data); record what was running
        when the process stopped as interrupted, so it is never run twice."""
        self.store.trim_history(self.max_history)  # --max-history may have been lowered
        snap = self.store.load()
        self.history = snap.history
        seen = [job[0] for _, job in snap.pending] + [job[0] for _, job, _ in snap.running]
        seen += [entry["prompt"][0] for entry in snap.history.values()
                 if isinstance(entry, dict) and isinstance(entry.get("prompt"), list) and entry["prompt"]]
        # the counter continues above every number it handed out (front numbers are negated)
        self.number_counter = max([snap.counter] + [abs(n) + 1 for n in seen
                                                    if isinstance(n, int) and not isinstance(n, bool)])
        for key, job, started in snap.running:
            self._add_history(key, job[1], interrupted_entry(job, started))
        for key, job in snap.pending:
            self._keys[id(job)] = key
            heapq.heappush(self.queue, job)

    def _add_history(self, key, prompt_id: str, entry: dict) -> None:
        """Store first, then the cache: oldest entries beyond max_history are dropped."""
        self._save(self.store.finish_job, key, prompt_id, entry, self.max_history)
        self.history.pop(prompt_id, None)
        while len(self.history) >= self.max_history > 0:
            self.history.pop(next(iter(self.history)))
        self.history[prompt_id] = entry

    @staticmethod
    def _save(write, *args):
        """A failing store (disk full, file removed) is logged; the queue keeps working from memory."""
        try:
            return write(*args)
        except Exception:
            log.exception("could not write the queue store (%s)", write.__name__)
            return None

    # -- numbering ------------------------------------------------------------
    def next_number(self, front: bool = False) -> int:
        with self.mutex:
            n = self.number_counter
            self.number_counter += 1
            self._save(self.store.set_counter, self.number_counter)
            return -n if front else n

    # -- pending / running ----------------------------------------------------
    def put(self, item: tuple) -> None:
        with self.mutex:
            self._keys[id(item)] = self._save(self.store.add_job, item)
            heapq.heappush(self.queue, item)
            self.on_change()
            self.not_empty.notify()

    def get(self, timeout: float | None = None):
        """Pop the next job: (item, item_id), or None after `timeout` seconds."""
        with self.not_empty:
            while not self.queue:
                self.not_empty.wait(timeout=timeout)
                if timeout is not None and not self.queue:
                    return None
            return self._start_next()

    def _start_next(self):
        item = heapq.heappop(self.queue)
        key = self._keys.pop(id(item), None)
        if key is not None:
            self._save(self.store.mark_running, key)
        item_id = self.task_counter
        self.running_keys[item_id] = key
        self.currently_running[item_id] = copy.deepcopy(item)
        self.task_counter += 1
        self.on_change()
        return item, item_id

    def take_matching(self, predicate: Callable[[tuple], bool], limit: int) -> list:
        """Start up to `limit` more jobs from the front of the queue, in order, while they match
        (--batch-prompts: the jobs that can join the running group)."""
        taken = []
        with self.mutex:
            while self.queue and len(taken) < limit and predicate(self.queue[0]):
                taken.append(self._start_next())
        return taken

    def task_done(self, item_id: int, history_result: dict, status: Optional[ExecutionStatus]) -> None:
        """Move a running job into history. `history_result` holds "outputs" and "meta"."""
        with self.mutex:
            item = self.currently_running.pop(item_id)
            entry = {
                "prompt": public_job(item),
                "outputs": {},
                "status": copy.deepcopy(status._asdict()) if status is not None else None,
            }
            entry.update(copy.deepcopy(history_result))  # owned by the queue from here on, never mutated
            self._add_history(self.running_keys.pop(item_id, None), item[1], entry)
            self.on_change()

    def get_current_queue(self) -> tuple[list, list]:
        with self.mutex:
            running = [public_job(x) for x in self.currently_running.values()]
            pending = [public_job(x) for x in copy.deepcopy(self.queue)]
            return running, pending

    def get_tasks_remaining(self) -> int:
        with self.mutex:
            return len(self.queue) + len(self.currently_running)

    def running_prompt_ids(self) -> list[str]:
        with self.mutex:
            return [x[1] for x in self.currently_running.values()]

    def wipe_queue(self) -> None:
        with self.mutex:
            self._save(self.store.clear_pending)
            self._keys.clear()
            self.queue = []
            self.on_change()

    def delete_queue_item(self, predicate: Callable[[tuple], bool]) -> bool:
        with self.mutex:
            for i, item in enumerate(self.queue):
                if predicate(item):
                    key = self._keys.pop(id(item), None)
                    if key is not None:
                        self._save(self.store.remove_job, key)
                    self.queue.pop(i)
                    heapq.heapify(self.queue)
                    self.on_change()
                    return True
        return False

    # -- history --------------------------------------------------------------
    def get_history(self, prompt_id: str | None = None, max_items: int | None = None,
                    offset: int = -1, deep: bool = True) -> dict:
        """`deep=False` hands out the stored entries themselves (a full history deep-copied
        takes seconds): for callers that only read them, such as the JSON routes."""
        clone = copy.deepcopy if deep else (lambda entry: entry)
        with self.mutex:
            if prompt_id is not None:
                if prompt_id in self.history:
                    return {prompt_id: clone(self.history[prompt_id])}
                return {}
            if max_items is not None and max_items <= 0:
                return {}
            keys = list(self.history)
            if offset < 0 and max_items is not None:
                offset = len(keys) - max_items
            offset = max(offset, 0)
            selected = keys[offset:]
            if max_items is not None:
                selected = selected[:max_items]
            return {k: clone(self.history[k]) for k in selected}

    def wipe_history(self) -> None:
        with self.mutex:
            self._save(self.store.clear_history)
            self.history = {}

    def delete_history_item(self, prompt_id: str) -> None:
        with self.mutex:
            self._save(self.store.remove_history, prompt_id)
            self.history.pop(prompt_id, None)

    # -- flags set by POST /free ---------------------------------------------
    def set_flag(self, name: str, value) -> None:
        with self.mutex:
            self.flags[name] = value
            self.not_empty.notify()

    def get_flags(self, reset: bool = True) -> dict:
        with self.mutex:
            flags = self.flags
            if reset:
                self.flags = {}
            else:
                flags = dict(flags)
            return flags
