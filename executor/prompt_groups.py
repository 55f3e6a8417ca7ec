"""--batch-prompts: which queued prompts run together, and running them as one group.

Prompts join a group when their graphs are the same except for seeds, prompt texts, cfg, denoise
and output names (the render-farm case: one workflow, many seeds): then they load the same models at the
same size with the same sampler and steps, and their UNet calls can share a batch
(models/sampling/prompt_batching.py). The group starts with the job the worker took; while it
runs, matching jobs at the front of the queue join it (up to MAX_MEMBERS at once), so a burst
of prompts posted one by one still batches.

Each member runs in a thread of its own with a PromptExecutor of its own (its events, history
entry and status are its own) whose caches share the worker's stored results: the members
load each model once. After the group the worker's caches keep what the last prompt used, as
after a serial run.
"""
from __future__ import annotations

import json
import logging
import os
import threading

from executor.graph_utils import is_link
from models import progress as model_progress
from models.sampling import prompt_batching

log = logging.getLogger(__name__)

MAX_MEMBERS = int(os.environ.get("COMFYD_BATCH_PROMPTS_MAX", "16"))
# inputs that may differ between the prompts of one group: none of them changes a model or the
# latent's shape, so the members' UNet calls still fit one batch (cfg and denoise only change
# each prompt's own guidance arithmetic and sigmas; every batch row carries its own sigma)
VARYING_INPUTS = frozenset({"seed", "noise_seed", "text", "text_g", "text_l", "filename_prefix", "cfg",
                            "denoise"})
POLL_SECONDS = 0.02


def batch_signature(prompt: dict) -> str | None:
    """Equal for prompts that differ only in VARYING_INPUTS; None for a malformed prompt."""
    try:
        nodes = []
        for node_id in sorted(prompt):
            node = prompt[node_id]
            inputs = {}
            for name, value in node.get("inputs", {}).items():
                if is_link(value):
                    inputs[name] = ["link", str(value[0]), value[1]]
                else:
                    inputs[name] = "*" if name in VARYING_INPUTS else value
            nodes.append([node_id, node["class_type"], inputs])
        return json.dumps(nodes, sort_keys=True)
    except (TypeError, ValueError, KeyError, AttributeError):
        return None


class GroupRun:
    """One group: started with a first job, fed by the queue until every member is done."""

    def __init__(self, worker, first_job, first_item_id):
        self.worker = worker
        self.signature = batch_signature(first_job[2])
        self._signatures: dict = {}  # prompt id -> batch_signature of a queued job already looked at
        self.group = prompt_batching.Group()
        self.threads: list[threading.Thread] = []
        self.views: list = []  # the members' cache views, in the order they finished
        self.lock = threading.Lock()
        self.member_done = threading.Event()  # wakes run() at once when a member finishes
        self.finished = 0
        self._start(first_job, first_item_id)
        self._admit()  # the matching jobs queued already start together with the first

    def _admit(self) -> None:
        room = MAX_MEMBERS - self.group.live()
        if room > 0 and self.signature is not None:
            for job, item_id in self.worker.queue.take_matching(self._matches, room):
                self._start(job, item_id)

    def _matches(self, job) -> bool:
        # the queue's head is asked again at every poll while it waits: its signature is kept
        if job[1] not in self._signatures:
            self._signatures[job[1]] = batch_signature(job[2])
        return self.signature is not None and self._signatures[job[1]] == self.signature

    def run(self) -> None:
        """Admit matching queued jobs while members run; return when all are done."""
        while True:
            self._admit()
            with self.lock:
                if self.finished == len(self.threads):
                    break
            self.member_done.wait(POLL_SECONDS)  # also the pace at which queued jobs are admitted
            self.member_done.clear()
        if self.views:
            self.worker.executor.caches.adopt(self.views[-1])
        sizes = self.group.batches
        stats = self.worker.batch_stats
        stats["groups"] += 1
        stats["prompts"] += len(self.threads)
        stats["model_batches"] += len(sizes)
        stats["largest_batch"] = max(stats["largest_batch"], max(sizes, default=0))
        if len(self.threads) > 1:
            log.info("batch-prompts: %d prompts, %d model batches (largest %d)", len(self.threads),
                     len(sizes), max(sizes, default=0))
        model_progress.request_interrupt(False)  # an interrupt left over for the finished group

    def _start(self, job, item_id) -> None:
        member = self.group.add_member(str(job[1]))
        interrupt = threading.Event()
        self.worker.register_running(job[1], job[3].get("client_id"), interrupt)
        thread = threading.Thread(target=self._member_main, args=(member, interrupt, job, item_id),
                                  name=f"comfyd-prompt-{job[1]}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def _member_main(self, member, interrupt, job, item_id) -> None:
        executor = self.worker.executor.member_executor()
        model_progress.bind_thread(interrupt)
        try:
            with member.running():
                self.worker.execute_job(executor, job, item_id)
                with self.lock:
                    self.views.append(executor.caches)
        finally:
            model_progress.bind_thread(None)
            with self.lock:
                self.finished += 1
            self.member_done.set()
