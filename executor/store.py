"""Where the queue and history live between restarts.

`MemoryStore` is the interface (every method a no-op: nothing persists) and `SqliteStore`
the real thing: one SQLite file under the user directory, in WAL mode, written through on
every change, so a SIGKILL loses nothing that was acknowledged. The PromptQueue keeps the
in-memory form as a cache and only reads the store once, at start (`load`).

A job is `(number, prompt_id, prompt, extra_data, outputs_to_execute, sensitive)`; the
sensitive slot is stored (the job needs it to run) but the file is private to its owner.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from typing import NamedTuple

log = logging.getLogger(__name__)


class Snapshot(NamedTuple):
    pending: list       # [(key, job)] in submission order
    running: list       # [(key, job, started_ms)] jobs that were running when the process stopped
    history: dict       # {prompt_id: entry} in completion order (oldest first)
    counter: int        # the next number POST /prompt hands out


class MemoryStore:
    """The store interface; this implementation keeps nothing."""

    def load(self) -> Snapshot:
        return Snapshot([], [], {}, 0)

    def add_job(self, job) -> int | None:
        """Persist a pending job; returns its key (None when nothing is kept)."""
        return None

    def mark_running(self, key: int) -> None:
        pass

    def remove_job(self, key: int) -> None:
        pass

    def clear_pending(self) -> None:
        pass

    def finish_job(self, key: int | None, prompt_id: str, entry: dict, max_items: int) -> None:
        """In one transaction: the history entry goes in, the job (if `key`) goes out."""
        pass

    def add_history(self, prompt_id: str, entry: dict, max_items: int) -> None:
        self.finish_job(None, prompt_id, entry, max_items)

    def remove_history(self, prompt_id: str) -> None:
        pass

    def clear_history(self) -> None:
        pass

    def trim_history(self, max_items: int) -> None:
        pass

    def set_counter(self, value: int) -> None:
        pass

    def close(self) -> None:
        pass


def _jsonable(value):
    """json.dumps fallback: numpy/torch scalars become numbers, anything else its str(), so a
    custom node's odd UI value can never stop a result from being recorded."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            pass
    if isinstance(value, (set, frozenset)):
        return list(value)
    return str(value)


def _dumps(value) -> str:
    return json.dumps(value, default=_jsonable)


SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    number TEXT NOT NULL, prompt_id TEXT NOT NULL, prompt TEXT NOT NULL, extra_data TEXT NOT NULL,
    outputs TEXT NOT NULL, sensitive TEXT NOT NULL,
    running INTEGER NOT NULL DEFAULT 0, started_at INTEGER);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, prompt_id TEXT NOT NULL UNIQUE, entry TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
"""


def _lock_file(path: str):
    """An open file holding an exclusive lock on `path`, or None when another process (or
    another store in this one) holds it. The OS drops the lock when the process dies."""
    f = open(path, "a+b")
    try:
        if os.name == "nt":
            import msvcrt
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return f
    except OSError:
        f.close()
        return None


def open_store(directory: str, port: int) -> MemoryStore:
    """The store for a server: `queue.sqlite3` in `directory`. Servers sharing a base directory
    (one per GPU, say) must not share a queue, or a second one starting would re-queue the
    first one's prompts and run them twice; while the file is taken, `queue-<port>.sqlite3` is
    used, and if that is taken too the queue is kept in memory only."""
    os.makedirs(directory, exist_ok=True)
    for name in ("queue.sqlite3", f"queue-{port}.sqlite3"):
        path = os.path.join(directory, name)
        lock = _lock_file(path + ".lock")
        if lock is not None:
            if name != "queue.sqlite3":
                log.warning("another server uses %s; this one keeps its queue in %s",
                            os.path.join(directory, "queue.sqlite3"), path)
            return SqliteStore(path, lock=lock)
    log.error("the queue files in %s are in use by other servers; this queue will not survive a restart",
              directory)
    return MemoryStore()


class SqliteStore(MemoryStore):
    """One connection shared by the HTTP thread and the worker, serialised by a lock.
    `lock` is an open lock file (see open_store) released by close()."""

    def __init__(self, path: str, lock=None):
        self.path = path
        self.lock = threading.Lock()
        self.file_lock = lock
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            self.db = self._open()
        except sqlite3.DatabaseError as e:  # a damaged file must not keep the server from starting
            aside = f"{path}.corrupt-{int(time.time())}"
            log.error("queue store %s is unreadable (%s); moved to %s, starting with an empty queue", path, e, aside)
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.replace(path + suffix, aside + suffix)
            self.db = self._open()

    def _open(self) -> sqlite3.Connection:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # it holds the sensitive slot
        os.close(fd)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across a process crash
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("integrity check failed")
            db.executescript(SCHEMA)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _run(self, sql: str, args=()) -> sqlite3.Cursor:
        with self.lock:
            return self.db.execute(sql, args)

    def load(self) -> Snapshot:
        with self.lock:
            rows = self.db.execute("SELECT key, number, prompt_id, prompt, extra_data, outputs, sensitive, running, "
                                   "started_at FROM jobs ORDER BY key").fetchall()
            history_rows = self.db.execute("SELECT prompt_id, entry FROM history ORDER BY seq").fetchall()
            counter = self.db.execute("SELECT value FROM meta WHERE name='counter'").fetchone()
        pending, running = [], []
        for key, number, pid, prompt, extra, outputs, sensitive, is_running, started in rows:
            try:
                job = (json.loads(number), pid, json.loads(prompt), json.loads(extra), json.loads(outputs),
                       json.loads(sensitive))
            except ValueError:
                log.error("queue store: job %s (%s) is unreadable and was dropped", key, pid)
                self.remove_job(key)
                continue
            if is_running:
                running.append((key, job, started))
            else:
                pending.append((key, job))
        history = {}
        for pid, entry in history_rows:
            try:
                history[pid] = json.loads(entry)
            except ValueError:
                log.error("queue store: history entry %s is unreadable and was dropped", pid)
        return Snapshot(pending, running, history, int(counter[0]) if counter else 0)

    def add_job(self, job) -> int:
        number, pid, prompt, extra, outputs = job[:5]
        sensitive = job[5] if len(job) > 5 and job[5] else {}
        cur = self._run("INSERT INTO jobs (number, prompt_id, prompt, extra_data, outputs, sensitive) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (_dumps(number), str(pid), _dumps(prompt), _dumps(extra), _dumps(list(outputs)),
                         _dumps(sensitive)))
        return cur.lastrowid

    def mark_running(self, key: int) -> None:
        self._run("UPDATE jobs SET running=1, started_at=? WHERE key=?", (int(time.time() * 1000), key))

    def remove_job(self, key: int) -> None:
        self._run("DELETE FROM jobs WHERE key=?", (key,))

    def clear_pending(self) -> None:
        self._run("DELETE FROM jobs WHERE running=0")

    def finish_job(self, key: int | None, prompt_id: str, entry: dict, max_items: int) -> None:
        text = _dumps(entry)
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                # a reused prompt id replaces its entry and moves it to the newest place
                self.db.execute("DELETE FROM history WHERE prompt_id=?", (str(prompt_id),))
                self.db.execute("INSERT INTO history (prompt_id, entry) VALUES (?, ?)", (str(prompt_id), text))
                if key is not None:
                    self.db.execute("DELETE FROM jobs WHERE key=?", (key,))
                self._trim(max_items)
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def _trim(self, max_items: int) -> None:
        if max_items > 0:  # everything at or below the newest-but-max_items sequence number (index walks)
            self.db.execute("DELETE FROM history WHERE seq <= "
                            "(SELECT seq FROM history ORDER BY seq DESC LIMIT 1 OFFSET ?)", (max_items,))

    def trim_history(self, max_items: int) -> None:
        with self.lock:
            self._trim(max_items)

    def remove_history(self, prompt_id: str) -> None:
        self._run("DELETE FROM history WHERE prompt_id=?", (str(prompt_id),))

    def clear_history(self) -> None:
        self._run("DELETE FROM history")

    def set_counter(self, value: int) -> None:
        self._run("INSERT INTO meta (name, value) VALUES ('counter', ?) "
                  "ON CONFLICT(name) DO UPDATE SET value=excluded.value", (str(value),))

    def close(self) -> None:
        with self.lock:
            self.db.close()
            if self.file_lock is not None:
                self.file_lock.close()
                self.file_lock = None


RESTART_REASON = "the server restarted while this prompt was running; it was not run again"


def interrupted_entry(job, started_ms: int | None = None, reason: str = RESTART_REASON) -> dict:
    """The history entry of a job that was running when the process stopped."""
    now = int(time.time() * 1000)
    messages = []
    if started_ms:
        messages.append(["execution_start", {"prompt_id": job[1], "timestamp": started_ms}])
    messages.append(["execution_interrupted", {"prompt_id": job[1], "node_id": None, "node_type": None,
                                               "executed": [], "reason": reason, "timestamp": now}])
    return {"prompt": list(job[:5]), "outputs": {},
            "status": {"status_str": "error", "completed": False, "messages": messages},
            "meta": {}}
