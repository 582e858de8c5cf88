"""What the loopback fakes share: an HTTP server on 127.0.0.1 that counts every request, injects faults,
adds latency, enforces a requests-per-minute limit, can hold requests (to kill a client mid-call), and
keeps Batch API jobs. Each vendor's wire format is a subclass (openai_server, anthropic_server, gemini_server).

Faults, consumed one per generation request in arrival order:
  ("status", code[, headers])  an error response in the vendor's error shape
  ("sleep", seconds)           answer late (past the client's timeout, if you like)
  ("drop",)                    close the connection without answering
  ("reset",)                   reset the connection (TCP RST) without answering
  ("cut",)                     200 whose body breaks off half-way (Content-Length promises the whole)
  ("broken",)                  200 with a body that is not JSON
  ("refusal",) ("empty",) ("truncated",)  a well-formed answer that declines / is empty / hit max_tokens

As a gateway at volume (bench/faults.py): `fault_rate` draws one of `rate_faults` (seeded) for that share of
the requests, generation and Batch API alike; a batch request's fault strikes after the vendor did the work
(the job exists, the poll counted), only the response is lost. Billing follows a vendor's: a generation attempt
is billed when its complete answer has been written (`billed`), a batch job in full once created (`ledger`).
"""

from __future__ import annotations

import collections
import json
import random
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def default_answer(request: dict, i: int) -> str:
    return json.dumps({"pairs": []})


def prompt_text(request: dict) -> str:
    """The last user text of a request body in any of the three wire formats."""
    if "contents" in request:  # Gemini
        return request["contents"][-1]["parts"][0]["text"]
    return request["messages"][-1]["content"]  # OpenAI, Anthropic


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


class FakeServer:
    def __init__(self, answer=None, faults: list | None = None, latency: float = 0.0, rpm: int | None = None,
                 rpm_burst_s: float = 1.0, hold_after: int | None = None, batch_polls: int = 1,
                 batch_create_faults: list | None = None, lose_batches: bool = False, fault_rate: float = 0.0,
                 rate_faults: list | None = None, seed: int = 0):
        # answer(request_body, sample_index) -> the model's text (request_body in the vendor's wire format)
        self.answer = answer or default_answer
        self.faults = list(faults or [])
        self.fault_rate, self.rate_faults = fault_rate, list(rate_faults or [])
        self._rng = random.Random(seed)
        self._tls = threading.local()  # per handler thread: whether the request being routed is a generation
        self.injected = collections.Counter()  # rate-drawn faults, per kind and route ("gen"/"batch")
        self.billed: list[dict] = []          # complete 200 answers to generation requests: prompt, times, payload
        self.latency = latency
        # the limit as vendors enforce it: a token bucket refilled at rpm/60 a second, holding `rpm_burst_s` of it
        self.rpm, self.rpm_burst_s = rpm, rpm_burst_s
        self._bucket, self._bucket_t = (rpm or 0) / 60 * rpm_burst_s, time.monotonic()
        self.hold_after = hold_after          # generation requests past this index wait for release()
        self.batch_polls = batch_polls        # status polls a batch job stays in progress
        self.requests: list[dict] = []        # every generation request body, in arrival order
        self.prompts: list[str] = []          # their prompt texts
        self.answered: list[str] = []         # prompts whose 200 answer was written
        self.hits = collections.Counter()     # per route name, every request
        self.rate_limited = 0
        self.held = 0
        self.batches: dict[str, dict] = {}
        # faults of batch creation, consumed one per created job and applied AFTER the job exists (the vendor
        # created it, the client never hears so): ("sleep", s), ("status", code), ("hold",) (until release())
        self.batch_create_faults = list(batch_create_faults or [])
        self.lose_batches = lose_batches      # every job is forgotten once created: polls answer 404
        self.lost_batches: dict[str, dict] = {}  # jobs forgotten (`lose_batch`): polls answer 404
        self._batch_seq = 0
        self.seen_headers: list[dict] = []
        self.lock = threading.Lock()
        self._released = threading.Event()
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def release(self) -> None:
        self.hold_after = None
        self._released.set()

    # -- what a vendor subclass provides

    def route(self, method: str, path: str, body) -> tuple[int, object, dict] | None:
        raise NotImplementedError

    def prompt_of(self, body: dict) -> str:
        return prompt_text(body)

    def error_body(self, code: int) -> dict:
        return {"error": {"message": f"injected {code}", "code": code}}

    def respond(self, body: dict, index: int, mode: str | None) -> dict:
        raise NotImplementedError

    def usage_of(self, payload: dict) -> tuple[int, int]:
        """(input, output) tokens a vendor response bills."""
        return 0, 0

    # -- the generation path every vendor shares

    def _draw(self, route: str):
        """A rate-drawn fault, or None (call with the lock held)."""
        if self.fault_rate and self._rng.random() < self.fault_rate:
            fault = self._rng.choice(self.rate_faults)
            self.injected[f"{route} {' '.join(map(str, fault[:2]))}{' +headers' if len(fault) > 2 else ''}"] += 1
            return fault
        return None

    def generate(self, handler, body: dict):
        arrived = time.time()
        self._tls.generation = True
        with self.lock:
            self.requests.append(body)
            self.prompts.append(self.prompt_of(body))
            index = len(self.requests) - 1
            fault = self.faults.pop(0) if self.faults else self._draw("gen")
            limited = False
            if self.rpm:
                now = time.monotonic()
                cap = max(1.0, self.rpm / 60 * self.rpm_burst_s)
                self._bucket = min(cap, self._bucket + (now - self._bucket_t) * self.rpm / 60)
                self._bucket_t = now
                limited = self._bucket < 1
                if limited:
                    self.rate_limited += 1
                else:
                    self._bucket -= 1
            hold = self.hold_after is not None and index >= self.hold_after
            if hold:
                self.held += 1
        if limited:
            return 429, self.error_body(429), {"Retry-After": "1"}
        if hold:
            self._released.wait()
            return None  # the client that sent it is gone
        if fault and fault[0] == "status":
            return fault[1], self.error_body(fault[1]), dict(fault[2] if len(fault) > 2 else {})
        if fault and fault[0] == "sleep":
            time.sleep(fault[1])
        if fault and fault[0] == "drop":
            return None
        if fault and fault[0] == "reset":
            return "reset"
        if fault and fault[0] == "broken":
            return 200, b'{"id": "x", "choices": [{"index": 0, ', {}
        if self.latency:
            time.sleep(self.latency)
        mode = fault[0] if fault and fault[0] != "cut" else None
        payload = self.respond(body, index, mode)
        if fault and fault[0] == "cut":
            return 200, payload, {"_cut": True}
        return 200, payload, {"_answered": self.prompts[index], "_bill": {"arrived": arrived, "payload": payload}}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real API

            def log_message(self, *args):
                pass

            def _serve(self, method):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path in ("/_fake/stats", "/_fake/ledger"):  # for a client in another process (the benchmarks)
                    with fake.lock:
                        data = json.dumps({"requests": len(fake.requests), "rate_limited": fake.rate_limited,
                                           "injected": dict(fake.injected)} if self.path == "/_fake/stats" else fake.ledger()).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                with fake.lock:
                    fake.seen_headers.append(dict(self.headers))
                ctype = self.headers.get("Content-Type", "")
                body = json.loads(raw) if raw and "json" in ctype else raw
                fake._tls.generation = False
                out = fake.route(method, self.path.split("?")[0], body)
                if isinstance(out, tuple) and not fake._tls.generation and fake.fault_rate:
                    # a Batch API request: the vendor did the work; a drawn fault loses only its response
                    with fake.lock:
                        fault = fake._draw("batch")
                    if fault and fault[0] == "sleep":
                        time.sleep(fault[1])
                    elif fault and fault[0] == "status":
                        out = fault[1], fake.error_body(fault[1]), dict(fault[2]) if len(fault) > 2 else {}
                    elif fault and fault[0] in ("drop", "reset"):
                        out = None if fault[0] == "drop" else "reset"
                    elif fault and fault[0] == "cut":
                        out = (*out[:2], {**out[2], "_cut": True})
                if out is None or out == "reset":  # close the connection without a word (a reset: an RST, not a FIN)
                    self.close_connection = True
                    try:
                        if out == "reset":
                            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        else:
                            self.connection.shutdown(2)
                    except OSError:
                        pass
                    return
                code, payload, headers = out
                answered = headers.pop("_answered", None)
                bill = headers.pop("_bill", None)
                cut = headers.pop("_cut", False)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2] if cut else data)
                    if cut:  # the rest never comes: the client reads a short body
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                except OSError:
                    return
                if answered is not None:
                    with fake.lock:
                        fake.answered.append(answered)
                        if bill is not None:
                            fake.billed.append({"prompt": answered, "arrived": bill["arrived"], "sent": time.time(),
                                                "tokens": fake.usage_of(bill["payload"]), "text": data.decode()})

            def do_POST(self):
                self._serve("POST")

            def do_GET(self):
                self._serve("GET")

        return Handler

    # -- Batch API jobs (the vendors differ only in shapes)

    def new_batch(self, prefix: str, items: list[tuple[str, dict]], meta: dict | None = None) -> str:
        with self.lock:
            self._batch_seq += 1
            job_id = f"{prefix}{self._batch_seq}"
            self.batches[job_id] = {"items": items, "polls": 0, "meta": meta or {}, "created": time.time()}
        return job_id

    def lose_batch(self, job_id: str) -> None:
        """The vendor forgets a job (deleted, or past its retention): polls answer 404 from now on."""
        with self.lock:
            self.lost_batches[job_id] = self.batches.pop(job_id)

    def known_batch(self, job_id: str) -> bool:
        if self.lose_batches and job_id in self.batches:
            self.lose_batch(job_id)
        return job_id in self.batches

    def batch_create_fault(self):
        """The response to a creation that just made its job when a fault is scripted: (code, body, headers),
        or "drop" (close the connection); None: answer as usual."""
        with self.lock:
            fault = self.batch_create_faults.pop(0) if self.batch_create_faults else None
            if fault and fault[0] == "hold":
                self.held += 1
        if fault is None:
            return None
        if fault[0] == "hold":
            self._released.wait()
            return "drop"  # the client that sent it is gone
        if fault[0] == "sleep":
            time.sleep(fault[1])
            return None
        return fault[1], self.error_body(fault[1]), {}

    def poll_batch(self, job_id: str) -> bool:
        """Count one status poll; True once the job is done."""
        with self.lock:
            job = self.batches[job_id]
            job["polls"] += 1
            return job["polls"] > self.batch_polls

    def batch_answers(self, job_id: str) -> list[tuple[str, dict]]:
        """(custom id, vendor response) for every item, computed once."""
        return self._answers(self.batches[job_id])

    def _answers(self, job: dict) -> list[tuple[str, dict]]:
        if "answers" not in job:
            job["answers"] = [(cid, self.respond(body, -1, None)) for cid, body in job["items"]]
        return job["answers"]

    def ledger(self) -> dict:
        """What a vendor bills (call with the lock held): every generation answer written whole, and every item of
        every batch job created (the vendor runs a job whether or not its results are ever fetched)."""
        jobs = []
        for job_id, job in [*self.batches.items(), *self.lost_batches.items()]:
            items = {cid: body for cid, body in job["items"]}
            jobs.append({"job_id": job_id, "created": job["created"],
                         "items": [{"custom_id": cid, "prompt": self.prompt_of(items[cid]), "tokens": self.usage_of(resp),
                                    "text": json.dumps(resp)} for cid, resp in self._answers(job)]})
        return {"online": self.billed, "batches": jobs}
