"""The persistent call cache: every service answer, keyed by provider identity and the full request.

SQLite in WAL mode, one row per call, committed as each answer arrives: a run killed half-way and
restarted pays for nothing twice, and outputs re-derived after a cleared DVC cache cost no calls.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

from llamaduo.providers.base import ChatRequest, ChatResult


def call_key(identity: str, request: ChatRequest) -> str:
    return hashlib.sha256(f"{identity}\n{request.key_material()}".encode()).hexdigest()


class CallCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, identity TEXT, result TEXT, created REAL)"
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

    def close(self) -> None:
        self._db.close()
