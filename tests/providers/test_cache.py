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
    cache._db.execute("INSERT INTO calls VALUES ('old', 'x', ?, 0)",
                      ('{"choices": [{"text": "a", "finish_reason": "stop"}], "input_tokens": 1, "output_tokens": 2}',))
    assert cache.get("old").choices[0].refusal is None
