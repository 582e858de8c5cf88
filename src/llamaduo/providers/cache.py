"""The persistent call cache: every service answer, keyed by provider identity and the full request.

SQLite in WAL mode, one row per call, committed as each answer arrives: a run killed half-way and
restarted pays for nothing twice, and outputs re-derived after a cleared DVC cache cost no calls.
Each row also keeps what the call cost (tokens and USD, as priced when it was paid), so a budget can add up
what was paid whatever crashed afterwards (`paid`).

Several processes may share one file (two stages, two loops, a user's rerun beside a running stage), so
the file also coordinates them:
- `claims`: a process takes a row for a key (atomically) before it sends that call; another process that
  misses the same key waits for the answer instead of paying for it again. A claim whose owner died (same
  host, pid gone) or that is older than the caller's timeout is taken over.
- `batch_submissions`: the intent to submit a Batch API job, written before the submission (with a tag
  derived from its keys that the job carries at the vendor), so a submission that timed out, got a 5xx or
  was killed before its job id came back is looked up at the vendor instead of submitted again.
- `batch_jobs`: submitted jobs (vendor id and the cache keys they will answer), so a run killed while
  waiting resumes polling them.

Nothing secret is stored: keys are hashes of provider identity (kind, model, masked URL), the request and
the sample index; rows hold answers and token counts. API keys never reach this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from llamaduo.atomic import pid_alive
from llamaduo.providers.base import ChatRequest, ChatResult

# columns added since the first schema: (table, column, SQL type and default); an older file gets them on open
_ADDED_COLUMNS = [
    ("calls", "cost_usd", "REAL NOT NULL DEFAULT 0"),
    ("calls", "input_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("calls", "output_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("batch_jobs", "tag", "TEXT"),
    ("batch_jobs", "resubmit_of", "TEXT"),
]


def call_key(identity: str, request: ChatRequest, sample: int | None = None) -> str:
    """Content address of one call. `sample` is set when n samples are sent as n separate calls (no native n)."""
    material = f"{identity}\n{request.key_material()}"
    if sample is not None:
        material += f"\nsample={sample}"
    return hashlib.sha256(material.encode()).hexdigest()


def batch_tag(identity: str, keys, generation: int = 0) -> str:
    """The client-side idempotency tag of a batch submission: the same keys give the same tag, so a job
    found at the vendor under it is this submission. `generation` counts resubmissions of a lost job."""
    material = "\n".join([identity, *sorted(keys), f"generation={generation}"])
    return "llamaduo-" + hashlib.sha256(material.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class BatchJob:
    job_id: str
    identity: str
    keys: tuple[str, ...]
    submitted: float
    tag: str | None = None
    resubmit_of: str | None = None  # the job this one replaces (it answered 404)


@dataclass(frozen=True)
class Submission:
    """A batch submission about to be sent (or sent, its job id not yet recorded)."""

    tag: str
    identity: str
    keys: tuple[str, ...]
    created: float
    recovered: bool  # left by another (dead or stale) owner: it may exist at the vendor, look it up first
    resubmit_of: str | None = None


@dataclass(frozen=True)
class BatchPlan:
    jobs: list[BatchJob]          # recorded, pending jobs that answer some of the wanted keys
    mine: list[Submission]        # submissions this cache instance now owns: send (or look up) them
    waiting: int                  # submissions of other live processes covering wanted keys: wait for them


class CallCache:
    def __init__(self, path: str | Path, *, budget=None):
        """`budget` (a `llamaduo.budget.Budget`): the cap the call engine holds every call through this cache to."""
        self.path = Path(path)
        self.budget = budget
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit; multi-statement changes use `_tx` (BEGIN IMMEDIATE: the write lock is taken before
        # reading, so a check-then-claim cannot interleave with another process's)
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: in WAL mode a commit survives a killed process (only a power cut can lose the last ones),
        # and a commit per answer stays cheap
        self._db.execute("PRAGMA synchronous=NORMAL")
        # who owns claims taken through this instance: host and pid say whether the owner still lives, the token
        # tells this instance from another one in the same process
        self.host, self.pid, self.token = socket.gethostname(), os.getpid(), uuid.uuid4().hex
        with self._tx():
            self._db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, identity TEXT, result TEXT, created REAL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS batch_jobs (job_id TEXT PRIMARY KEY, identity TEXT, keys TEXT, "
                             "submitted REAL, state TEXT, finished REAL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, host TEXT, pid INTEGER, token TEXT, "
                             "claimed_at REAL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS batch_submissions (tag TEXT PRIMARY KEY, identity TEXT, keys TEXT, "
                             "created REAL, host TEXT, pid INTEGER, token TEXT, claimed_at REAL, resubmit_of TEXT)")
            for table, column, decl in _ADDED_COLUMNS:
                have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
                    if table == "calls" and column.endswith("_tokens"):
                        # rows written before: their tokens are in the stored answer (their cost is unknown: 0)
                        self._db.execute(f"UPDATE calls SET {column} = COALESCE(json_extract(result, '$.{column}'), 0)")

    @contextlib.contextmanager
    def _tx(self):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- answers

    def get(self, key: str) -> ChatResult | None:
        row = self._db.execute("SELECT result FROM calls WHERE key = ?", (key,)).fetchone()
        return ChatResult.from_json(row[0]) if row else None

    def put(self, key: str, identity: str, result: ChatResult, cost_usd: float = 0.0, *, first: bool = False) -> bool:
        """Store an answer and what it cost; its claim, whoever held it, is done. With `first` an answer stored
        already stays (several processes may collect one batch job's answers): returns whether this call stored it."""
        with self._tx():
            cur = self._db.execute(f"INSERT OR {'IGNORE' if first else 'REPLACE'} INTO calls (key, identity, result, created, "
                                   "cost_usd, input_tokens, output_tokens) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                   (key, identity, result.to_json(), time.time(), cost_usd, result.input_tokens,
                                    result.output_tokens))
            self._db.execute("DELETE FROM claims WHERE key = ?", (key,))
        return cur.rowcount == 1

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def paid(self, since: float | None = None) -> dict:
        """What the calls stored at or after `since` (a unix time; None: all) cost, as priced when paid."""
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(cost_usd), 0), COALESCE(SUM(input_tokens), 0), "
                               "COALESCE(SUM(output_tokens), 0) FROM calls WHERE created >= ?",
                               (float("-inf") if since is None else since,)).fetchone()
        return {"calls": int(row[0]), "cost_usd": float(row[1]), "input_tokens": int(row[2]), "output_tokens": int(row[3])}

    # -- in-flight claims

    def _live(self, host: str, pid: int, token: str, claimed_at: float, stale_s: float) -> bool:
        if token == self.token:
            return True
        if time.time() - claimed_at > stale_s:
            return False
        # another host's pid cannot be checked: only the age says it is gone
        return host != self.host or pid_alive(pid)

    def claim(self, key: str, stale_s: float) -> str:
        """Take the right to pay for `key`: "claimed" (send it), "answered" (it is in the cache now) or "busy"
        (another live process is paying for it: wait). A claim older than `stale_s` or of a dead process is taken over."""
        with self._tx():
            if self._db.execute("SELECT 1 FROM calls WHERE key = ?", (key,)).fetchone():
                return "answered"
            row = self._db.execute("SELECT host, pid, token, claimed_at FROM claims WHERE key = ?", (key,)).fetchone()
            if row is not None and row[2] != self.token and self._live(*row, stale_s):
                return "busy"
            self._db.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?)",
                             (key, self.host, self.pid, self.token, time.time()))
            return "claimed"

    def release(self, key: str | None = None) -> None:
        """Give up this instance's claim on `key` (None: all of them), e.g. after the call failed."""
        if key is None:
            self._db.execute("DELETE FROM claims WHERE token = ?", (self.token,))
        else:
            self._db.execute("DELETE FROM claims WHERE key = ? AND token = ?", (key, self.token))

    # -- Batch API jobs

    def add_batch(self, job_id: str, identity: str, keys: list[str], *, tag: str | None = None,
                  resubmit_of: str | None = None) -> None:
        """Record a submitted job at once (and close its submission): from here on a restart polls it rather
        than paying again."""
        with self._tx():
            self._db.execute("INSERT OR REPLACE INTO batch_jobs (job_id, identity, keys, submitted, state, finished, tag, "
                             "resubmit_of) VALUES (?, ?, ?, ?, 'pending', NULL, ?, ?)",
                             (job_id, identity, json.dumps(list(keys)), time.time(), tag, resubmit_of))
            if tag is not None:
                self._db.execute("DELETE FROM batch_submissions WHERE tag = ?", (tag,))

    def pending_batches(self, identity: str) -> list[BatchJob]:
        rows = self._db.execute("SELECT job_id, identity, keys, submitted, tag, resubmit_of FROM batch_jobs "
                                "WHERE identity = ? AND state = 'pending' ORDER BY submitted", (identity,)).fetchall()
        return [BatchJob(r[0], r[1], tuple(json.loads(r[2])), r[3], r[4], r[5]) for r in rows]

    def finish_batch(self, job_id: str, state: str) -> None:
        self._db.execute("UPDATE batch_jobs SET state = ?, finished = ? WHERE job_id = ?", (state, time.time(), job_id))

    def plan_batches(self, identity: str, wanted: list[str], *, chunk: int, stale_s: float) -> BatchPlan:
        """In one transaction: the recorded jobs and submissions that cover `wanted` keys, the submissions this
        instance takes over (their owner died or went stale), and new submissions (recorded before they are
        sent) for the keys nothing covers, `chunk` keys each. Keys answered meanwhile are left out."""
        with self._tx():
            jobs = [j for j in self.pending_batches(identity) if not set(wanted).isdisjoint(j.keys)]
            covered = {k for j in jobs for k in j.keys}
            mine, waiting = [], 0
            rows = self._db.execute("SELECT tag, keys, created, host, pid, token, claimed_at, resubmit_of FROM batch_submissions "
                                    "WHERE identity = ? ORDER BY created", (identity,)).fetchall()
            for tag, keys, created, host, pid, token, claimed_at, resubmit_of in rows:
                keys = tuple(json.loads(keys))
                if set(wanted).isdisjoint(keys):
                    continue
                covered.update(keys)
                if token == self.token:  # left by an earlier run of this instance (its submission failed): look first
                    mine.append(Submission(tag, identity, keys, created, recovered=True, resubmit_of=resubmit_of))
                elif self._live(host, pid, token, claimed_at, stale_s):
                    waiting += 1
                else:
                    self._db.execute("UPDATE batch_submissions SET host = ?, pid = ?, token = ?, claimed_at = ? WHERE tag = ?",
                                     (self.host, self.pid, self.token, time.time(), tag))
                    mine.append(Submission(tag, identity, keys, created, recovered=True, resubmit_of=resubmit_of))
            answered = set()
            fresh = [k for k in dict.fromkeys(wanted) if k not in covered]
            if fresh:
                marks = ",".join("?" * len(fresh))
                answered = {r[0] for r in self._db.execute(f"SELECT key FROM calls WHERE key IN ({marks})", fresh)}
            fresh = [k for k in fresh if k not in answered]
            for start in range(0, len(fresh), chunk):
                keys = tuple(fresh[start:start + chunk])
                sub = self._new_submission(identity, keys, batch_tag(identity, keys))
                mine.append(sub)
            return BatchPlan(jobs, mine, waiting)

    def resubmission(self, job: BatchJob, keys: list[str]) -> Submission:
        """Record the intent to submit `keys` again, in place of `job` (which the vendor no longer knows)."""
        with self._tx():
            return self._new_submission(job.identity, tuple(keys), batch_tag(job.identity, keys, generation=1),
                                        resubmit_of=job.job_id)

    def _new_submission(self, identity: str, keys: tuple[str, ...], tag: str, resubmit_of: str | None = None) -> Submission:
        now = time.time()
        self._db.execute("INSERT OR REPLACE INTO batch_submissions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (tag, identity, json.dumps(list(keys)), now, self.host, self.pid, self.token, now, resubmit_of))
        return Submission(tag, identity, keys, now, recovered=False, resubmit_of=resubmit_of)

    def drop_submission(self, tag: str) -> None:
        """Forget a submission known not to exist at the vendor (never sent, rejected, or not found)."""
        self._db.execute("DELETE FROM batch_submissions WHERE tag = ?", (tag,))

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.release()
        self._db.close()

    def __enter__(self) -> CallCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
