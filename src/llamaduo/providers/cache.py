"""The persistent call cache: every service answer, keyed by provider identity and the full request.

SQLite in WAL mode, one row per call, committed as each answer arrives: a run killed half-way and
restarted pays for nothing twice, and outputs re-derived after a cleared DVC cache cost no calls.
The same file records submitted Batch API jobs (id and the cache keys they will answer), so a run killed
while waiting resumes polling them instead of submitting again.

Nothing secret is stored: keys are hashes of provider identity (kind, model), the request and the sample
index; rows hold answers and token counts. API keys never reach this module.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from llamaduo.providers.base import ChatRequest, ChatResult


def call_key(identity: str, request: ChatRequest, sample: int | None = None) -> str:
    """Content address of one call. `sample` is set when n samples are sent as n separate calls (no native n)."""
    material = f"{identity}\n{request.key_material()}"
    if sample is not None:
        material += f"\nsample={sample}"
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class BatchJob:
    job_id: str
    identity: str
    keys: tuple[str, ...]
    submitted: float


class CallCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: in WAL mode a commit survives a killed process (only a power cut can lose the last ones),
        # and a commit per answer stays cheap
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, identity TEXT, result TEXT, created REAL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS batch_jobs (job_id TEXT PRIMARY KEY, identity TEXT, keys TEXT, "
            "submitted REAL, state TEXT, finished REAL)"
        )
        self._db.commit()

    def get(self, key: str) -> ChatResult | None:
        row = self._db.execute("SELECT result FROM calls WHERE key = ?", (key,)).fetchone()
        return ChatResult.from_json(row[0]) if row else None

    def put(self, key: str, identity: str, result: ChatResult) -> None:
        self._db.execute("INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?)", (key, identity, result.to_json(), time.time()))
        self._db.commit()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    # -- Batch API jobs

    def add_batch(self, job_id: str, identity: str, keys: list[str]) -> None:
        """Record a submitted job at once: from here on a restart polls it rather than paying again."""
        self._db.execute("INSERT OR REPLACE INTO batch_jobs VALUES (?, ?, ?, ?, 'pending', NULL)",
                         (job_id, identity, json.dumps(keys), time.time()))
        self._db.commit()

    def pending_batches(self, identity: str) -> list[BatchJob]:
        rows = self._db.execute("SELECT job_id, identity, keys, submitted FROM batch_jobs "
                                "WHERE identity = ? AND state = 'pending' ORDER BY submitted", (identity,)).fetchall()
        return [BatchJob(r[0], r[1], tuple(json.loads(r[2])), r[3]) for r in rows]

    def finish_batch(self, job_id: str, state: str) -> None:
        self._db.execute("UPDATE batch_jobs SET state = ?, finished = ? WHERE job_id = ?", (state, time.time(), job_id))
        self._db.commit()

    def close(self) -> None:
        self._db.close()
