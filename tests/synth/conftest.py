"""A real local HTTP server speaking the OpenAI completions API, answering DESIGNER's prompts with canned,
deterministic completions (zoo's template teacher), and failing on request: HTTP errors, slow answers, unreadable
bodies, malformed completions. It counts the requests of every kind."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from zoo.synth.teacher import kind_of, teacher_answer


class CannedServer:
    """``with CannedServer(...) as server:`` serves ``server.url`` (``.../v1``) until the block ends.

    ``fail_first``: answer HTTP 500 to the first n requests; ``malformed``: a set of request numbers (1-based) that
    get a completion no stage can parse; ``garbage``: request numbers that get a body that is not JSON;
    ``status``: answer every request with this HTTP status (or ``{number: status}`` for some); ``delay``: seconds
    before every answer; ``hang``: request numbers answered only after a minute; ``trickle``: seconds between the
    answer's bytes (a server that sends its body a byte at a time); ``short``: request numbers whose body stops
    before its Content-Length."""

    def __init__(
        self, fail_first=0, malformed=(), garbage=(), status=None, delay=0.0, api="chat", hang=(), trickle=0.0,
        short=(),
    ) -> None:  # fmt: skip
        self.fail_first, self.malformed, self.garbage = fail_first, set(malformed), set(garbage)
        self.status, self.delay, self.api = status, delay, api
        self.hang, self.trickle, self.short = set(hang), trickle, set(short)
        self.requests = 0
        self.by_kind: Counter = Counter()
        self.bodies: list[dict] = []
        self.lock = threading.Lock()

    def __enter__(self) -> CannedServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                try:
                    self._answer()
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

            def _answer(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests += 1
                    number = server.requests
                    server.bodies.append(body)
                prompt = body["messages"][0]["content"] if "messages" in body else body["prompt"]
                with server.lock:
                    server.by_kind[kind_of(prompt)] += 1
                time.sleep(server.delay + (60 if number in server.hang else 0))
                status = server.status.get(number) if isinstance(server.status, dict) else server.status
                if status is not None or number <= server.fail_first:
                    self.send_response(status or 500)
                    self.end_headers()
                    self.wfile.write(b"canned failure")
                    return
                text = "I cannot do that." if number in server.malformed else teacher_answer(prompt)
                choice = {"message": {"role": "assistant", "content": text}} if "messages" in body else {"text": text}
                payload = b"{not json" if number in server.garbage else json.dumps({"choices": [choice]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload) + (10 if number in server.short else 0)))
                self.end_headers()
                if server.trickle:
                    for byte in payload:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(server.trickle)
                else:
                    self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def canned_server():
    """``canned_server(**failures)``: a :class:`CannedServer` to use as a context manager."""
    return CannedServer
