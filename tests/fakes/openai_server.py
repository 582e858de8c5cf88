"""A loopback server that speaks the OpenAI Chat Completions wire format, with scripted faults.

It counts every request it receives, so tests can prove that nothing is paid for twice.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAI:
    def __init__(self, answer=None, faults: list | None = None):
        # answer(request_json, index) -> content string; faults: per-request list of ("status", code, headers) or
        # ("sleep", seconds) consumed in order before normal answers
        self.answer = answer or (lambda req, i: json.dumps({"pairs": []}))
        self.faults = list(faults or [])
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body, headers=None):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append(req)
                    index = len(fake.requests) - 1
                    fault = fake.faults.pop(0) if fake.faults else None
                if fault and fault[0] == "status":
                    return self._send(fault[1], {"error": {"message": f"injected {fault[1]}", "type": "x"}}, fault[2] if len(fault) > 2 else None)
                if fault and fault[0] == "sleep":
                    time.sleep(fault[1])
                n = req.get("n", 1)
                choices = [{"index": k, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": fake.answer(req, k)}} for k in range(n)]
                self._send(200, {"id": f"c{index}", "object": "chat.completion", "created": 0, "model": req["model"],
                                 "choices": choices, "usage": {"prompt_tokens": 10, "completion_tokens": 5 * n,
                                                               "total_tokens": 10 + 5 * n}})

        return Handler
