"""A small OpenAI-compatible /v1/completions server (SSE stream) in the test process, faults on demand."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MALFORMED = {
    "malformed": b"data: {not json\n\n",
    "bad_shape": b'data: {"choices": [{"text": "x", "token_ids": [1]}], "usage": "many"}\n\n',
    "bad_ids": b'data: {"choices": [{"text": "x", "token_ids": ["x"]}]}\n\n',
    "not_sse": b"<html>proxy error</html>\n",
}
ENGINE_DEAD = "EngineCore encountered an issue. See stack trace (above) for the root cause."


class FakeOpenAI:
    """Streams `tokens` (ids, decoded with `tokenizer`) one chunk each; `mode` picks a fault:
    ok | http500 | no_done | slow (no answer before `delay_s`) | one of MALFORMED | after `fault_after`
    tokens: stop_listening (as vLLM stopped by SIGTERM: no new connection is accepted and the open stream
    stays open, silent, until stop()), engine_dead (as vLLM whose engine died: an error chunk, then [DONE])
    or reset (the connection reset, as by a killed process)."""

    def __init__(self, tokenizer, tokens: list[int], port: int = 0, model: str = "fake", max_model_len=512):
        self.tokenizer, self.tokens, self.model, self.max_model_len = tokenizer, tokens, model, max_model_len
        self.mode = "ok"
        self.delay_s = 0.0  # pause before each token (or before the answer in `slow` mode)
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.sent: list[int] = []  # tokens sent per request
        self.disconnected: list[bool] = []  # the client closed the stream before the end, per request
        self.connections = 0  # TCP connections accepted (requests' and any others)
        self.fault_after = 0
        self.gone_at: float | None = None  # time.monotonic() when stop_listening took effect
        self.released = threading.Event()  # stop(): the silent stream of stop_listening ends
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                fake.connections += 1
                super().setup()

            def do_GET(self):
                body = {"data": [{"id": fake.model, "max_model_len": fake.max_model_len}]}
                self._send(200, json.dumps(body).encode(), "application/json")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                fake.headers.append(dict(self.headers))
                fake.serve_completion(self)

            def _send(self, code, data, ctype):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def serve_completion(self, h) -> None:
        if self.mode == "http500":
            h._send(500, b'{"error": {"message": "boom", "code": 500}}', "application/json")
            return
        if self.mode == "slow":
            time.sleep(self.delay_s)
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Connection", "close")
        h.end_headers()
        sent, closed = 0, False
        try:
            if self.mode in MALFORMED:
                h.wfile.write(MALFORMED[self.mode])
                h.wfile.flush()
                return
            for k, i in enumerate(self.tokens[: self.requests[-1]["max_tokens"]]):
                if k == self.fault_after and self.mode in ("stop_listening", "reset", "engine_dead"):
                    self._fault(h)
                    return
                if self.mode != "slow" and self.delay_s:
                    time.sleep(self.delay_s)
                text = self.tokenizer.decode([i])
                chunk = {"choices": [{"index": 0, "text": text, "token_ids": [i], "finish_reason": None}]}
                h.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                h.wfile.flush()
                sent += 1
            if self.mode != "no_done":
                h.wfile.write(b"data: [DONE]\n\n")
                h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        finally:
            self.sent.append(sent)
            self.disconnected.append(closed)
            h.close_connection = True

    def _fault(self, h) -> None:
        if self.mode == "engine_dead":  # vLLM's streaming error response (EngineDeadError), then [DONE]
            error = {"message": ENGINE_DEAD, "type": "InternalServerError", "param": None, "code": 500}
            h.wfile.write(f"data: {json.dumps({'error': error})}\n\ndata: [DONE]\n\n".encode())
            h.wfile.flush()
            return
        if self.mode == "reset":  # SO_LINGER 0: close() sends a RST
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
            return
        self.httpd.shutdown()  # from this handler's thread: serve_forever runs in another
        self.httpd.server_close()
        self.gone_at = time.monotonic()
        self.released.wait(30)

    def stop(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()
