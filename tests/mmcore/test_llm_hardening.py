"""The LLM HTTP backend against a hostile or misconfigured endpoint: the API key never follows a redirect to another
host, and an answer is read only up to a cap (issue 13, item 13)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mmcore.llm import MAX_RESPONSE_BYTES, HTTPChatBackend, LLMError

KEY = "sk-test-do-not-leak"


def _answer(text: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()


class _Server:
    """A local HTTP server: `routes` maps a path to (status, headers, body); every request is recorded."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.seen.append((self.command, self.path, dict(self.headers)))
                status, headers, body = outer.routes.get(self.path, (404, {}, b""))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer  # noqa: N815 - http.server's names

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers():
    a, b = _Server(), _Server()
    yield a, b
    a.close()
    b.close()


def test_a_redirect_to_another_host_is_refused_and_the_key_stays_home(servers):
    """Before: urllib followed the 302 and sent `Authorization: Bearer <key>` to the other host."""
    endpoint, elsewhere = servers
    endpoint.routes["/v1/chat/completions"] = (302, {"Location": f"{elsewhere.url}/collect"}, b"")
    elsewhere.routes["/collect"] = (200, {}, _answer("thanks for the key"))
    backend = HTTPChatBackend(f"{endpoint.url}/v1", api_key=KEY, retries=0)
    with pytest.raises(LLMError, match="another host"):
        backend.complete([{"role": "user", "content": "hi"}])
    assert elsewhere.seen == []


def test_a_redirect_within_the_endpoint_is_followed(servers):
    endpoint, _ = servers
    endpoint.routes["/v1/chat/completions"] = (302, {"Location": "/v2/chat/completions"}, b"")
    endpoint.routes["/v2/chat/completions"] = (200, {}, _answer("moved"))
    backend = HTTPChatBackend(f"{endpoint.url}/v1", api_key=KEY, retries=0)
    assert backend.complete([{"role": "user", "content": "hi"}]) == "moved"
    assert [path for _, path, _ in endpoint.seen] == ["/v1/chat/completions", "/v2/chat/completions"]


def test_an_answer_larger_than_the_cap_is_refused(servers):
    endpoint, _ = servers
    endpoint.routes["/v1/chat/completions"] = (200, {}, _answer("x" * (MAX_RESPONSE_BYTES + 10)))
    with pytest.raises(LLMError, match="answered more than 1,000,000 bytes"):
        HTTPChatBackend(f"{endpoint.url}/v1", retries=0).complete([{"role": "user", "content": "hi"}])
