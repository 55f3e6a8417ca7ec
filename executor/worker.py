"""The worker thread: takes prompts off the queue one at a time and runs them.

Per job (API.md §10.5): the queue broadcasts `status` when the job is taken, the executor
emits its events, the history entry is written (task_done, which broadcasts `status`
again), and only then `executing {node: null}` tells the client the job is over.
Between jobs it honours the flags POST /free sets.
"""
from __future__ import annotations

import gc
import logging
import threading
import time

from executor.queue import ExecutionStatus, PromptQueue
from executor.runner import PromptExecutor

log = logging.getLogger(__name__)


def release_memory() -> None:
    """What "unload models" can do while models live in cached node results: collect garbage and
    hand cached CUDA blocks back (the results themselves go with the executor's caches)."""
    gc.collect()
    import torch
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Worker:
    def __init__(self, queue: PromptQueue, executor: PromptExecutor, sink, free_models=None):
        self.queue = queue
        self.executor = executor
        self.sink = sink
        self.free_models = free_models or release_memory
        self.running_prompt_id: str | None = None
        self.running_client_id: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="comfyd-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.queue.set_flag("wake", True)  # wake a blocked get()
        if self._thread is not None:
            self._thread.join(timeout)

    def current_node_for(self, sid):
        """The display node now executing, if `sid` submitted the running prompt."""
        if sid is not None and sid == self.running_client_id:
            return self.executor.current_node
        return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            item = self.queue.get(timeout=1.0)
            if item is not None:
                self.run_job(*item)
            self._handle_flags()

    def run_job(self, job, item_id) -> None:
        number, prompt_id, prompt, extra_data, outputs = job[:5]
        extra_data = dict(extra_data)
        if len(job) > 5 and job[5]:  # sensitive keys go back in only for the run itself
            extra_data.update(job[5])
        self.running_prompt_id = prompt_id
        self.running_client_id = extra_data.get("client_id")
        started = time.perf_counter()
        try:
            self.executor.execute(prompt, prompt_id, extra_data, outputs)
            messages = self.executor.status_messages
            status = ExecutionStatus("success" if self.executor.success else "error", self.executor.success,
                                     messages)
            history = self.executor.history_result
        except Exception as e:  # an executor bug must not kill the worker or lose the job
            log.exception("prompt %s crashed the executor", prompt_id)
            status = ExecutionStatus("error", False, [["execution_error", {
                "prompt_id": prompt_id, "exception_message": str(e), "exception_type": type(e).__name__,
                "timestamp": int(time.time() * 1000)}]])
            history = {"outputs": {}, "meta": {}}
        self.queue.task_done(item_id, history, status)
        if self.running_client_id is not None:
            self.sink.send("executing", {"node": None, "prompt_id": prompt_id}, self.running_client_id)
        log.info("Prompt executed in %.2f seconds", time.perf_counter() - started)
        self.running_prompt_id = self.running_client_id = None

    def _handle_flags(self) -> None:
        flags = self.queue.get_flags()
        if flags.get("unload_models") or flags.get("free_memory"):
            self.free_models()
        if flags.get("free_memory"):
            self.executor.reset()
            gc.collect()
