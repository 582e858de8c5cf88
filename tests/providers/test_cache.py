from llamaduo.providers import ChatRequest, ChatResult, Choice
from llamaduo.providers.cache import CallCache, call_key

REQ = ChatRequest(messages=(("user", "q"),), temperature=0.5, max_tokens=8)


def test_key_covers_identity_request_and_sample():
    keys = {call_key("openai:a", REQ), call_key("openai:b", REQ), call_key("openai:a", REQ, 0), call_key("openai:a", REQ, 1),
            call_key("openai:a", ChatRequest(messages=(("user", "q"),), temperature=0.6, max_tokens=8))}
    assert len(keys) == 5
    assert call_key("openai:a", REQ) == call_key("openai:a", ChatRequest(messages=(("user", "q"),), temperature=0.5, max_tokens=8))


def test_results_and_batch_jobs_survive_reopening(tmp_path):
    cache = CallCache(tmp_path / "c.sqlite")
    cache.put("k1", "openai:a", ChatResult([Choice("hi", "stop", refusal=None)], 3, 1))
    cache.add_batch("batch_1", "openai:a", ["k1", "k2"])
    cache.add_batch("batch_2", "anthropic:b", ["k3"])
    cache.close()
    again = CallCache(tmp_path / "c.sqlite")
    hit = again.get("k1")
    assert hit.cached and hit.choices[0].text == "hi" and (hit.input_tokens, hit.output_tokens) == (3, 1)
    assert again.get("k2") is None
    [job] = again.pending_batches("openai:a")
    assert job.job_id == "batch_1" and job.keys == ("k1", "k2")
    again.finish_batch("batch_1", "completed")
    assert again.pending_batches("openai:a") == [] and len(again.pending_batches("anthropic:b")) == 1


def test_rows_written_before_refusal_field_still_read(tmp_path):
    cache = CallCache(tmp_path / "c.sqlite")
    cache._db.execute("INSERT INTO calls (key, identity, result, created) VALUES ('old', 'x', ?, 0)",
                      ('{"choices": [{"text": "a", "finish_reason": "stop"}], "input_tokens": 1, "output_tokens": 2}',))
    assert cache.get("old").choices[0].refusal is None


def test_paid_sums_what_was_stored_since(tmp_path):
    cache = CallCache(tmp_path / "c.sqlite")
    res = ChatResult([Choice("a", "stop")], 100, 20)
    cache.put("k1", "x", res, cost_usd=0.5)
    assert cache.paid() == {"calls": 1, "cost_usd": 0.5, "input_tokens": 100, "output_tokens": 20}
    cache._db.execute("UPDATE calls SET created = 1000")  # paid long ago
    cache.put("k2", "x", res, cost_usd=0.25)
    cache.put("k3", "x", ChatResult([Choice("b", "stop")], 1, 2), cost_usd=0.125)
    assert cache.paid(since=2000) == {"calls": 2, "cost_usd": 0.375, "input_tokens": 101, "output_tokens": 22}
    assert cache.paid(since=1000)["calls"] == 3 and cache.paid(since=1e12) == {"calls": 0, "cost_usd": 0.0,
                                                                                "input_tokens": 0, "output_tokens": 0}


def test_an_old_cache_file_is_migrated(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the schema before per-call costs
        db.execute("CREATE TABLE calls (key TEXT PRIMARY KEY, identity TEXT, result TEXT, created REAL)")
        db.execute("CREATE TABLE batch_jobs (job_id TEXT PRIMARY KEY, identity TEXT, keys TEXT, submitted REAL, state TEXT, "
                   "finished REAL)")
        db.execute("INSERT INTO calls VALUES ('old', 'x', ?, 5)", (ChatResult([Choice("a", "stop")], 7, 3).to_json(),))
        db.execute("INSERT INTO batch_jobs VALUES ('b1', 'x', '[\"k\"]', 5, 'pending', NULL)")
    cache = CallCache(path)
    assert cache.get("old").choices[0].text == "a"
    assert cache.paid() == {"calls": 1, "cost_usd": 0.0, "input_tokens": 7, "output_tokens": 3}  # tokens kept, cost unknown
    [job] = cache.pending_batches("x")
    assert job.keys == ("k",) and job.tag is None
    cache.put("new", "x", ChatResult([Choice("b", "stop")], 1, 1), cost_usd=0.01)
    assert CallCache(path).paid(since=6)["cost_usd"] == 0.01


def test_claims_make_other_processes_wait_and_dead_owners_lose_them(tmp_path):
    import subprocess
    import sys

    a, b = CallCache(tmp_path / "c.sqlite"), CallCache(tmp_path / "c.sqlite")
    assert a.claim("k", stale_s=60) == "claimed" and a.claim("k", stale_s=60) == "claimed"  # its own: still held
    assert b.claim("k", stale_s=60) == "busy"
    a.put("k", "x", ChatResult([Choice("a", "stop")], 1, 1))
    assert b.claim("k", stale_s=60) == "answered"
    # a claim of a process that died is taken over; so is one older than the caller's timeout
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    a._db.execute("INSERT INTO claims VALUES ('k2', ?, ?, 'gone', ?)", (a.host, int(dead.stdout), __import__("time").time()))
    assert b.claim("k2", stale_s=60) == "claimed" and a.claim("k2", stale_s=60) == "busy"
    assert a.claim("k2", stale_s=-1) == "claimed"
    a.release("k2")
    assert b.claim("k2", stale_s=60) == "claimed"
