"""The prompt queue and the history.

A job is the tuple `(number, prompt_id, prompt, extra_data, outputs_to_execute, sensitive)`;
the pending queue is a min-heap on it (priority, then prompt id), as in ComfyUI.
`on_change` is called whenever the queue changes, so the server can broadcast `status`.
The persistent form lives behind `store` (see executor/store.py); memory is the cache.
"""
from __future__ import annotations

import copy
import heapq
import threading
from typing import Callable, NamedTuple, Optional

from executor.store import MemoryStore, interrupted_entry


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
        """Re-queue what was pending; record what was running when the process died as
        interrupted (it is not run twice)."""
        pending, interrupted, history, counter = self.store.load()
        self.history = history
        numbers = [job[0] for _, job in pending + interrupted if isinstance(job[0], int)]
        self.number_counter = max([counter] + [n + 1 for n in numbers])
        for key, job in interrupted:
            entry = interrupted_entry(job, "the server stopped while this prompt was running")
            self.store.add_history(job[1], entry, self.max_history)
            self.store.remove_job(key)
            self.history.pop(job[1], None)
            self.history[job[1]] = entry
        for key, job in pending:
            self._keys[id(job)] = key
            heapq.heappush(self.queue, job)

    # -- numbering ------------------------------------------------------------
    def next_number(self, front: bool = False) -> int:
        with self.mutex:
            n = self.number_counter
            self.number_counter += 1
            self.store.set_counter(self.number_counter)
            return -n if front else n

    # -- pending / running ----------------------------------------------------
    def put(self, item: tuple) -> None:
        with self.mutex:
            self._keys[id(item)] = self.store.add_job(item)
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
            item = heapq.heappop(self.queue)
            key = self._keys.pop(id(item), None)
            if key is not None:
                self.store.mark_running(key)
            item_id = self.task_counter
            self.running_keys[item_id] = key
            self.currently_running[item_id] = copy.deepcopy(item)
            self.task_counter += 1
            self.on_change()
            return item, item_id

    def task_done(self, item_id: int, history_result: dict, status: Optional[ExecutionStatus]) -> None:
        """Move a running job into history. `history_result` holds "outputs" and "meta"."""
        with self.mutex:
            item = self.currently_running.pop(item_id)
            while len(self.history) >= self.max_history > 0:
                self.history.pop(next(iter(self.history)))
            entry = {
                "prompt": public_job(item),
                "outputs": {},
                "status": copy.deepcopy(status._asdict()) if status is not None else None,
            }
            entry.update(history_result)
            self.store.add_history(item[1], entry, self.max_history)
            key = self.running_keys.pop(item_id, None)
            if key is not None:
                self.store.remove_job(key)
            self.history.pop(item[1], None)
            self.history[item[1]] = entry
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
            self.store.clear_pending()
            self._keys.clear()
            self.queue = []
            self.on_change()

    def delete_queue_item(self, predicate: Callable[[tuple], bool]) -> bool:
        with self.mutex:
            for i, item in enumerate(self.queue):
                if predicate(item):
                    key = self._keys.pop(id(item), None)
                    if key is not None:
                        self.store.remove_job(key)
                    self.queue.pop(i)
                    heapq.heapify(self.queue)
                    self.on_change()
                    return True
        return False

    # -- history --------------------------------------------------------------
    def get_history(self, prompt_id: str | None = None, max_items: int | None = None,
                    offset: int = -1) -> dict:
        with self.mutex:
            if prompt_id is not None:
                if prompt_id in self.history:
                    return {prompt_id: copy.deepcopy(self.history[prompt_id])}
                return {}
            keys = list(self.history)
            if offset < 0 and max_items is not None:
                offset = len(keys) - max_items
            offset = max(offset, 0)
            selected = keys[offset:]
            if max_items is not None:
                selected = selected[:max_items]
            return {k: copy.deepcopy(self.history[k]) for k in selected}

    def wipe_history(self) -> None:
        with self.mutex:
            self.store.clear_history()
            self.history = {}

    def delete_history_item(self, prompt_id: str) -> None:
        with self.mutex:
            self.store.remove_history(prompt_id)
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
