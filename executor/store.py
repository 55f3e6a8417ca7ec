"""Where the queue and history live between restarts: a small store interface and its SQLite
implementation (one file under the user directory). The in-memory PromptQueue is the cache;
every change is written through here first."""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time


class MemoryStore:
    """No persistence (tests, --user-directory-less embedding)."""

    def load(self):
        return [], [], {}, 0

    def add_job(self, job) -> int:
        return 0

    def mark_running(self, key: int) -> None:
        pass

    def remove_job(self, key: int) -> None:
        pass

    def clear_pending(self) -> None:
        pass

    def add_history(self, prompt_id: str, entry: dict, max_items: int) -> None:
        pass

    def remove_history(self, prompt_id: str) -> None:
        pass

    def clear_history(self) -> None:
        pass

    def set_counter(self, value: int) -> None:
        pass


class SqliteStore:
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS jobs (key INTEGER PRIMARY KEY AUTOINCREMENT, number TEXT, prompt_id TEXT,
        prompt TEXT, extra_data TEXT, outputs TEXT, sensitive TEXT, running INTEGER DEFAULT 0);
    CREATE TABLE IF NOT EXISTS history (seq INTEGER PRIMARY KEY AUTOINCREMENT, prompt_id TEXT UNIQUE, entry TEXT);
    CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
    """

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path = path
        self.lock = threading.Lock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(self.SCHEMA)

    def _run(self, sql, args=()):
        with self.lock:
            return self.db.execute(sql, args)

    def load(self):
        """(pending jobs [(key, job)], interrupted jobs [job], history {id: entry}, counter)."""
        with self.lock:
            rows = self.db.execute("SELECT key, number, prompt_id, prompt, extra_data, outputs, sensitive, running "
                                   "FROM jobs ORDER BY key").fetchall()
            history = {pid: json.loads(entry) for pid, entry in
                       self.db.execute("SELECT prompt_id, entry FROM history ORDER BY seq")}
            counter = self.db.execute("SELECT value FROM meta WHERE name='counter'").fetchone()
        pending, interrupted = [], []
        for key, number, pid, prompt, extra, outputs, sensitive, running in rows:
            job = (json.loads(number), pid, json.loads(prompt), json.loads(extra), json.loads(outputs), json.loads(sensitive))
            (interrupted if running else pending).append((key, job))
        return pending, interrupted, history, int(counter[0]) if counter else 0

    def add_job(self, job) -> int:
        number, pid, prompt, extra, outputs = job[:5]
        sensitive = job[5] if len(job) > 5 else {}
        cur = self._run("INSERT INTO jobs (number, prompt_id, prompt, extra_data, outputs, sensitive) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (json.dumps(number), pid, json.dumps(prompt), json.dumps(extra),
                                                      json.dumps(list(outputs)), json.dumps(sensitive)))
        return cur.lastrowid

    def mark_running(self, key: int) -> None:
        self._run("UPDATE jobs SET running=1 WHERE key=?", (key,))

    def remove_job(self, key: int) -> None:
        self._run("DELETE FROM jobs WHERE key=?", (key,))

    def clear_pending(self) -> None:
        self._run("DELETE FROM jobs WHERE running=0")

    def add_history(self, prompt_id: str, entry: dict, max_items: int) -> None:
        with self.lock:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM history WHERE prompt_id=?", (prompt_id,))
            self.db.execute("INSERT INTO history (prompt_id, entry) VALUES (?, ?)", (prompt_id, json.dumps(entry)))
            if max_items > 0:
                self.db.execute("DELETE FROM history WHERE seq NOT IN "
                                "(SELECT seq FROM history ORDER BY seq DESC LIMIT ?)", (max_items,))
            self.db.execute("COMMIT")

    def remove_history(self, prompt_id: str) -> None:
        self._run("DELETE FROM history WHERE prompt_id=?", (prompt_id,))

    def clear_history(self) -> None:
        self._run("DELETE FROM history")

    def set_counter(self, value: int) -> None:
        self._run("INSERT INTO meta (name, value) VALUES ('counter', ?) "
                  "ON CONFLICT(name) DO UPDATE SET value=excluded.value", (str(value),))


def interrupted_entry(job, reason: str) -> dict:
    """History entry for a job that was running when the process died."""
    now = int(time.time() * 1000)
    return {"prompt": list(job[:5]), "outputs": {},
            "status": {"status_str": "error", "completed": False,
                       "messages": [["execution_interrupted", {"prompt_id": job[1], "node_id": None,
                                                               "node_type": None, "executed": [],
                                                               "reason": reason, "timestamp": now}]]},
            "meta": {}}
