"""A loopback OpenAI server that also stores completions: a Chat Completions call with `store: true` is kept, with
its `metadata` and request messages, and the stored-completions endpoints list them as the real API does:

- `GET /v1/chat/completions?metadata[k]=v&model=&after=&limit=&order=`: a cursor page (`data`, `first_id`, `last_id`,
  `has_more`) of stored completions, oldest first for `order=asc`;
- `GET /v1/chat/completions/{id}/messages?after=&limit=&order=`: a cursor page of the request's messages (each with an
  id), which the SDK reads as `client.chat.completions.messages.list(id)`.
"""

from __future__ import annotations

import re
import time
import urllib.parse

from fakes.openai_server import FakeOpenAI


def _page(items: list[dict], query: dict, *, limit_default: int = 20) -> dict:
    if query.get("order", "asc") == "desc":
        items = items[::-1]
    after = query.get("after")
    if after:
        at = next((i for i, x in enumerate(items) if x["id"] == after), None)
        items = items[at + 1:] if at is not None else []
    limit = int(query.get("limit", limit_default))
    page = items[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}


class FakeStoredOpenAI(FakeOpenAI):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stored: list[dict] = []   # (completion, metadata, messages) in the order they were made
        self.list_calls = 0

    def respond(self, body: dict, index: int, mode: str | None) -> dict:
        out = super().respond(body, index, mode)
        out.update(id=f"chatcmpl-{index}", created=int(time.time()))
        if body.get("store"):
            with self.lock:
                self.stored.append({"completion": {**out, "metadata": body.get("metadata") or {}},
                                    "messages": [{"id": f"chatcmpl-{index}-{k}", **m} for k, m in enumerate(body["messages"])]})
        return out

    def _handler(self):
        fake, base = self, super()._handler()

        class Handler(base):
            def _serve(self, method):  # the list endpoints read the query string, which `route` is not given
                fake._tls.query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                super()._serve(method)

        return Handler

    def route(self, method, path, body):
        if method == "GET" and path == "/v1/chat/completions":
            query = self._tls.query
            wanted = {m.group(1): v for k, v in query.items() if (m := re.fullmatch(r"metadata\[(.+)\]", k))}
            with self.lock:
                self.list_calls += 1
                items = [s["completion"] for s in self.stored
                         if all(s["completion"]["metadata"].get(k) == v for k, v in wanted.items())
                         and (not query.get("model") or s["completion"]["model"].startswith(query["model"]))]
            return 200, _page(items, query), {}
        m = re.fullmatch(r"/v1/chat/completions/([^/]+)/messages", path)
        if method == "GET" and m:
            with self.lock:
                found = [s for s in self.stored if s["completion"]["id"] == m.group(1)]
            if not found:
                return 404, self.error_body(404), {}
            return 200, _page(found[0]["messages"], self._tls.query), {}
        return super().route(method, path, body)
