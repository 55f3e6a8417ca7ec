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
from models import progress as model_progress

log = logging.getLogger(__name__)


def release_memory() -> None:
    """What "unload models" can do while models live in cached node results: collect garbage and
    hand cached CUDA blocks back (the results themselves go with the executor's caches)."""
    gc.collect()
    import torch
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _Running:
    __slots__ = ("client_id", "executor", "interrupt")

    def __init__(self, client_id, executor=None, interrupt=None):
        self.client_id, self.executor, self.interrupt = client_id, executor, interrupt


class Worker:
    def __init__(self, queue: PromptQueue, executor: PromptExecutor, sink, free_models=None,
                 batch_prompts: bool = False):
        self.queue = queue
        self.executor = executor
        self.sink = sink
        self.free_models = free_models or release_memory
        # --batch-prompts: compatible queued prompts run as a group (executor/prompt_groups.py)
        self.batch_prompts = batch_prompts and executor.caches.shares_across_prompts()
        if batch_prompts and not self.batch_prompts:
            log.warning("--batch-prompts needs the classic cache: prompts run one at a time")
        self.running: dict[str, _Running] = {}  # prompt id -> who submitted it, its executor
        self.batch_stats = {"groups": 0, "prompts": 0, "model_batches": 0, "largest_batch": 0}
        self._running_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running_prompt_id(self) -> str | None:
        with self._running_lock:
            return next(iter(self.running), None)

    @property
    def running_client_id(self) -> str | None:
        with self._running_lock:
            return next((r.client_id for r in self.running.values()), None)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="comfyd-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.queue.set_flag("wake", True)  # wake a blocked get()
        if self._thread is not None:
            self._thread.join(timeout)

    def current_node_for(self, sid):
        """The display node now executing, if `sid` submitted a running prompt."""
        if sid is None:
            return None
        with self._running_lock:
            for r in self.running.values():
                if r.client_id == sid and r.executor is not None:
                    return r.executor.current_node
        return None

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """POST /interrupt: the running prompt (or the one named); False when that one is not running."""
        with self._running_lock:
            if prompt_id and prompt_id not in self.running:
                return False
            targets = [self.running[prompt_id]] if prompt_id else list(self.running.values())
        flags = [r.interrupt for r in targets if r.interrupt is not None]
        if not flags:  # one prompt at a time: the global flag (also when idle, as ComfyUI)
            model_progress.request_interrupt(True)
        for flag in flags:
            flag.set()
        return True

    def register_running(self, prompt_id, client_id, interrupt=None) -> None:
        with self._running_lock:
            self.running[prompt_id] = _Running(client_id, None, interrupt)

    def _loop(self) -> None:
        while not self._stop.is_set():
            item = self.queue.get(timeout=1.0)
            if item is not None:
                if self.batch_prompts:
                    from executor.prompt_groups import GroupRun
                    GroupRun(self, *item).run()
                else:
                    self.run_job(*item)
            self._handle_flags()

    def run_job(self, job, item_id) -> None:
        self.register_running(job[1], dict(job[3]).get("client_id"))
        self.execute_job(self.executor, job, item_id)

    def execute_job(self, executor: PromptExecutor, job, item_id) -> None:
        """Run one job with `executor` and file its history entry (the job is registered running)."""
        number, prompt_id, prompt, extra_data, outputs = job[:5]
        extra_data = dict(extra_data)
        if len(job) > 5 and job[5]:  # sensitive keys go back in only for the run itself
            extra_data.update(job[5])
        client_id = extra_data.get("client_id")
        with self._running_lock:
            self.running[prompt_id].executor = executor
        started = time.perf_counter()
        try:
            executor.execute(prompt, prompt_id, extra_data, outputs)
            messages = executor.status_messages
            status = ExecutionStatus("success" if executor.success else "error", executor.success, messages)
            history = executor.history_result
        except Exception as e:  # an executor bug must not kill the worker or lose the job
            log.exception("prompt %s crashed the executor", prompt_id)
            status = ExecutionStatus("error", False, [["execution_error", {
                "prompt_id": prompt_id, "exception_message": str(e), "exception_type": type(e).__name__,
                "timestamp": int(time.time() * 1000)}]])
            history = {"outputs": {}, "meta": {}}
        finally:
            with self._running_lock:
                self.running.pop(prompt_id, None)
        self.queue.task_done(item_id, history, status)
        if client_id is not None:
            self.sink.send("executing", {"node": None, "prompt_id": prompt_id}, client_id)
        log.info("Prompt executed in %.2f seconds", time.perf_counter() - started)

    def _handle_flags(self) -> None:
        flags = self.queue.get_flags()
        if flags.get("unload_models") or flags.get("free_memory"):
            self.free_models()
        if flags.get("free_memory"):
            self.executor.reset()
            gc.collect()
