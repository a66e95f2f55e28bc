"""A real HTTP server on loopback that speaks the chat-completions protocol.

It answers ``POST /v1/chat/completions`` (streaming off; ``logprobs``/``top_logprobs``
honoured) and ``GET /v1/models`` with whatever a *responder* function returns for each request
body, so tests, benchmarks and dry runs exercise the real client, the real HTTP stack and real
concurrency without an LLM. It records every request (headers and body), counts requests in
flight and the most ever in flight, and can add a fixed delay per request.

:class:`KeywordResponder` is a scripted stand-in for an LLM that answers every saelab prompt
in its expected format with a simple keyword rule: explanations name the most frequent marked
token; judges say yes when that word appears. It lets the whole pipeline run end to end.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from saelab.interp.prompts import TASK_BY_SYSTEM

Alternatives = list[tuple[str, float]]


@dataclass
class Reply:
    """What the server sends for one request.

    ``text`` becomes the assistant message; ``status`` ≠ 200 sends an error body instead;
    ``raw`` is sent as the body verbatim (e.g. malformed JSON); ``refusal`` fills the message's
    refusal field; ``logprobs`` gives per-token (token, top alternatives) — when the request
    asks for logprobs and this is None, the text is split into tokens with logprob 0;
    ``delay`` adds seconds before answering.
    """

    text: str | None = ""
    status: int = 200
    raw: bytes | None = None
    refusal: str | None = None
    logprobs: list[tuple[str, Alternatives]] | None = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


Responder = Callable[[dict[str, Any]], "Reply | str"]


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    time: float


_TOKEN_RE = re.compile(r"\d+|\w+|\s+|[^\w\s]")


def split_tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(text)


class ChatServer:
    """``with ChatServer(responder) as server: ... server.url ...``"""

    def __init__(self, responder: Responder, *, delay: float = 0.0, slots: int = 0,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.responder = responder
        self.delay = delay
        # ``slots`` > 0 models a server that works on at most that many requests at once
        # (the rest queue), like an inference server at its batch limit.
        self._slots = threading.Semaphore(slots) if slots > 0 else None
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/_stats"):
                    with server._lock:
                        stats = {"requests": len(server.chat_requests()),
                                 "max_in_flight": server.max_in_flight}
                    self._send(200, stats)
                elif self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [
                        {"id": "loopback", "object": "model", "owned_by": "saelab"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                raw_body = self.rfile.read(length)
                try:
                    body = json.loads(raw_body)
                except json.JSONDecodeError:
                    self._send(400, {"error": {"message": "request body is not JSON"}})
                    return
                with server._lock:
                    server.requests.append(RecordedRequest(
                        self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                        time.monotonic()))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if not self.path.rstrip("/").endswith("/chat/completions"):
                        self._send(404, {"error": {"message": f"no route {self.path}"}})
                        return
                    reply = server.responder(body)
                    if isinstance(reply, str):
                        reply = Reply(reply)
                    if server._slots is not None:
                        with server._slots:
                            time.sleep(server.delay + reply.delay)
                    else:
                        time.sleep(server.delay + reply.delay)
                    if reply.raw is not None:
                        self._send_bytes(reply.status, reply.raw, reply.headers)
                    elif reply.status != 200:
                        self._send(reply.status, {"error": {
                            "message": f"scripted error {reply.status}",
                            "type": "server_error", "code": reply.status}}, reply.headers)
                    else:
                        self._send(200, completion_body(body, reply), reply.headers)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _send(self, status: int, obj: Any, headers: dict[str, str] | None = None
                      ) -> None:
                self._send_bytes(status, json.dumps(obj).encode(), headers)

            def _send_bytes(self, status: int, data: bytes,
                            headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test); nothing to answer

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._server.request_queue_size = 256
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.rstrip("/").endswith("/chat/completions")]

    def start(self) -> ChatServer:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def completion_body(request: dict[str, Any], reply: Reply) -> dict[str, Any]:
    """A chat.completion object as OpenAI's API returns it (non-streaming)."""
    text = reply.text or ""
    message: dict[str, Any] = {"role": "assistant", "content": None if reply.refusal else text,
                               "refusal": reply.refusal}
    choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "stop",
                              "logprobs": None}
    if request.get("logprobs") and not reply.refusal:
        pairs = reply.logprobs or [(t, [(t, 0.0)]) for t in split_tokens(text)]
        k = int(request.get("top_logprobs") or 0)
        choice["logprobs"] = {"content": [
            {"token": tok, "logprob": alts[0][1] if alts else 0.0, "bytes": list(tok.encode()),
             "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                              for t, lp in alts[:k]]} for tok, alts in pairs]}
    prompt_tokens = sum(len(split_tokens(m.get("content") or ""))
                        for m in request.get("messages", []))
    return {"id": f"chatcmpl-{int(time.time() * 1e6)}", "object": "chat.completion",
            "created": int(time.time()), "model": request.get("model", "loopback"),
            "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(split_tokens(text)),
                      "total_tokens": prompt_tokens + len(split_tokens(text))}}


# ---------------------------------------------------------------------- a scripted "LLM"
_MARKED = re.compile(r"<<(.+?)>>")
_QUOTED = re.compile(r'"([^"]+)"')


def task_of(request: dict[str, Any]) -> str:
    messages = request.get("messages", [])
    system = messages[0].get("content", "") if messages else ""
    return TASK_BY_SYSTEM.get(system, "unknown")


def _user_text(request: dict[str, Any]) -> str:
    return str(request["messages"][-1].get("content", ""))


def _keyword(text: str) -> str:
    explanation = text.split("\n", 1)[0]
    quoted = _QUOTED.findall(explanation)
    return (quoted[0] if quoted else explanation.split()[-1]).strip().lower()


def _numbered(text: str, prefix: str) -> list[str]:
    return re.findall(rf"^{prefix} \d+: (.*)$", text, flags=re.M)


class KeywordResponder:
    """Answers each saelab task by a keyword rule (see the module docstring)."""

    def __call__(self, request: dict[str, Any]) -> Reply:
        task = task_of(request)
        text = _user_text(request)
        handler = getattr(self, f"_{task}", None)
        if handler is None:
            return Reply(status=400, text=None)
        return handler(text)

    def _explain(self, text: str) -> Reply:
        counts = Counter(m.strip().lower() for m in _MARKED.findall(text))
        word = counts.most_common(1)[0][0] if counts else "nothing"
        return Reply(f'The feature fires on the word "{word}".\n[EXPLANATION]: the word "{word}"')

    def _detection(self, text: str) -> Reply:
        word = _keyword(text.removeprefix("Explanation: "))
        texts = _numbered(text, "Text")
        return Reply(json.dumps([int(word in t.lower()) for t in texts]))

    def _fuzzing(self, text: str) -> Reply:
        word = _keyword(text.removeprefix("Explanation: "))
        texts = _numbered(text, "Text")
        return Reply(json.dumps([int(any(word in m.lower() for m in _MARKED.findall(t)))
                                 for t in texts]))

    def _simulation(self, text: str) -> Reply:
        word = _keyword(text.removeprefix("Explanation: "))
        tokens = text.split("Tokens:\n", 1)[1].split("\n")
        pairs: list[tuple[str, Alternatives]] = []
        for i, tok in enumerate(tokens):
            if i:
                pairs.append(("\n", [("\n", 0.0)]))
            if tok.strip().lower() == word:
                pairs.append(("9", [("9", -0.4), ("10", -1.2), ("8", -2.0)]))
            else:
                pairs.append(("0", [("0", -0.05), ("1", -3.0)]))
        return Reply("".join(t for t, _ in pairs), logprobs=pairs)

    def _generation(self, text: str) -> Reply:
        word = _keyword(text.removeprefix("Explanation: "))
        n = int(re.search(r"Write (\d+) texts", text).group(1))  # type: ignore[union-attr]
        return Reply(json.dumps([f"Here is sentence {i} with {word} in it." for i in range(n)]))

    def _sage(self, text: str) -> Reply:
        task = text.split("\n", 1)[0].removeprefix("TASK: ").strip()
        if task == "ANALYZE_EXEMPLARS":
            counts = Counter(m.strip().lower() for m in _MARKED.findall(text))
            words = [w for w, _ in counts.most_common(2)] or ["nothing"]
            return Reply(json.dumps({"hypotheses": [f'the word "{w}"' for w in words]}))
        if task == "DESIGN_TEST":
            word = _keyword(re.search(r"^Hypothesis \d+: (.*)$", text, re.M).group(1))  # type: ignore[union-attr]
            return Reply(json.dumps({"probes": [
                {"text": f"We saw {word} again today.", "expected": 9},
                {"text": f"A {word} is here.", "expected": 9},
                {"text": "Nothing relevant at all.", "expected": 0},
                {"text": "The weather was calm.", "expected": 0}]}))
        if task == "ANALYZE_RESULT":
            levels = [(float(e), float(m)) for e, m in
                      re.findall(r"expected ([\d.]+), measured ([\d.]+)", text)]
            high = [m for e, m in levels if e >= 5]
            low = [m for e, m in levels if e < 5]
            ok = bool(high) and min(high) > max(low, default=0.0)
            return Reply(json.dumps({"analysis": f"high probes {high}, low probes {low}",
                                     "verdict": "confirm" if ok else "reject"}))
        if task == "REVIEW_ALL_HYPOTHESES":
            return Reply(json.dumps({"review": "kept the confirmed hypotheses"}))
        if task == "FINAL_CONCLUSION":
            evidence = json.loads(text.split("\n\n", 1)[1].split("\n\nYour review:")[0])
            kept = [h["hypothesis"] for h in evidence if h["status"] == "confirmed"]
            parts = kept or [evidence[0]["hypothesis"]]
            return Reply(json.dumps({"explanation": "; ".join(parts), "parts": parts,
                                     "polysemantic": len(parts) > 1}))
        return Reply(status=400, text=None)


def main(argv: list[str] | None = None) -> None:
    """``python -m saelab.interp.loopback``: serve the keyword "LLM" until interrupted (prints
    the base URL first), e.g. for ``saelab explain --llm-base-url URL --llm-model loopback``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m saelab.interp.loopback",
                                 description=main.__doc__)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds per request")
    ap.add_argument("--slots", type=int, default=0, help="requests worked on at once (0 = all)")
    args = ap.parse_args(argv)
    server = ChatServer(KeywordResponder(), delay=args.delay, slots=args.slots, port=args.port)
    print(server.url, flush=True)
    try:
        server._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._server.server_close()


if __name__ == "__main__":
    main()
