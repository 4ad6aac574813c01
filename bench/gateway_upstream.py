"""A fast fake OpenAI upstream ("replica") for bench/gateway_bench.py.

Pure asyncio streams, HTTP/1.1 keep-alive, Content-Length request bodies. Routes:
GET /health, /v1/models, /stats (completions served so far, and render calls);
POST /tokenize and /v1/{chat/,}completions/render (vLLM's, which vllm-router's cache_aware
policy calls; one byte, one token); POST /v1/chat/completions and /v1/completions: a JSON
completion, or with "stream": true an SSE stream of --tokens chunks (--token-delay seconds
apart), a usage chunk and [DONE].
Every response carries `x-replica: <--name>`. Unknown paths answer 404 and are logged.

Run as: python bench/gateway_upstream.py --port P --name a [--tokens 8] [--token-delay 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time

MODEL = "bench-model"


RENDER = ("/tokenize", "/v1/chat/completions/render", "/v1/completions/render")


def token_ids(req: dict[str, object]) -> list[int]:
    """A one-byte-per-token "tokenizer" (prefix-preserving, like a real one) for /tokenize."""
    messages = req.get("messages")
    if isinstance(messages, list):
        text = "".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    else:
        text = str(req.get("prompt", ""))
    return list(text.encode())


class Upstream:
    def __init__(self, name: str, tokens: int, delay: float) -> None:
        self.name = name
        self.tokens = tokens
        self.delay = delay
        self.served = 0
        self.rendered = 0

    def head(self, status: str, ctype: str, length: int | None, close: bool) -> bytes:
        framing = (
            f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
        )
        conn = "close" if close else "keep-alive"
        return (
            f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\n{framing}\r\n"
            f"x-replica: {self.name}\r\nconnection: {conn}\r\n\r\n"
        ).encode()

    def json_reply(self, obj: object, close: bool, status: str = "200 OK") -> bytes:
        body = json.dumps(obj, separators=(",", ":")).encode()
        return self.head(status, "application/json", len(body), close) + body

    def completion(self, path: str, req: dict[str, object], prompt: int) -> dict[str, object]:
        text = " tok" * self.tokens
        usage = {"prompt_tokens": prompt, "completion_tokens": self.tokens,
                 "total_tokens": prompt + self.tokens}  # fmt: skip
        base = {"id": f"cmpl-{self.name}-{self.served}", "created": int(time.time()),
                "model": req.get("model", MODEL), "usage": usage}  # fmt: skip
        if path == "/v1/completions":
            choice: dict[str, object] = {"index": 0, "text": text, "finish_reason": "length"}
            return {**base, "object": "text_completion", "choices": [choice]}
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": "length"}
        return {**base, "object": "chat.completion", "choices": [choice]}

    async def stream(
        self, writer: asyncio.StreamWriter, path: str, req: dict[str, object], prompt: int
    ) -> None:
        chat = path == "/v1/chat/completions"
        base = {"id": f"cmpl-{self.name}-{self.served}", "created": int(time.time()),
                "model": req.get("model", MODEL),
                "object": "chat.completion.chunk" if chat else "text_completion"}  # fmt: skip

        def event(obj: object) -> bytes:
            data = b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
            return b"%x\r\n%s\r\n" % (len(data), data)

        out = [self.head("200 OK", "text/event-stream", None, False)]
        for i in range(self.tokens):
            piece = " tok" if i else "tok"
            choice = (
                {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
            )
            out.append(event({**base, "choices": [{**choice, "finish_reason": None}]}))
            if self.delay:  # one write per token; else one write for the whole answer
                writer.write(b"".join(out))
                out.clear()
                await writer.drain()
                await asyncio.sleep(self.delay)
        usage = {"prompt_tokens": prompt, "completion_tokens": self.tokens,
                 "total_tokens": prompt + self.tokens}  # fmt: skip
        last = {"index": 0, "delta": {}} if chat else {"index": 0, "text": ""}
        out.append(event({**base, "choices": [{**last, "finish_reason": "length"}]}))
        out.append(event({**base, "choices": [], "usage": usage}))
        done = b"data: [DONE]\n\n"
        out.append(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
        writer.write(b"".join(out))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, version = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    key, _, value = line.partition(":")
                    headers[key.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                conn = headers.get("connection", "").lower()
                close = conn == "close" or (version == "HTTP/1.0" and conn != "keep-alive")
                path = path.split("?", 1)[0]
                await self.route(writer, method, path, body, close)
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def route(
        self, writer: asyncio.StreamWriter, method: str, path: str, body: bytes, close: bool
    ) -> None:
        if method == "GET" and path == "/health":
            writer.write(self.json_reply({"status": "ok"}, close))
        elif method == "GET" and path == "/v1/models":
            model = {"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}
            writer.write(self.json_reply({"object": "list", "data": [model]}, close))
        elif method == "GET" and path == "/stats":
            writer.write(
                self.json_reply(
                    {"name": self.name, "requests": self.served, "rendered": self.rendered}, close
                )
            )
        elif method == "POST" and path in RENDER:  # vllm-router's cache_aware asks for these
            try:
                req = json.loads(body)
            except ValueError:
                req = {}
            self.rendered += 1
            ids = token_ids(req)
            reply: dict[str, object] = {"token_ids": ids}
            if path == "/tokenize":
                reply = {"count": len(ids), "max_model_len": 32768, "tokens": ids}
            writer.write(self.json_reply(reply, close))
        elif method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            try:
                req = json.loads(body)
            except ValueError:
                writer.write(self.json_reply({"error": "bad json"}, close, "400 Bad Request"))
                return
            self.served += 1
            prompt = max(1, len(body) // 4)
            if req.get("stream"):
                await self.stream(writer, path, req, prompt)
            else:
                writer.write(self.json_reply(self.completion(path, req, prompt), close))
        else:
            print(f"{self.name}: 404 {method} {path}", file=sys.stderr, flush=True)
            writer.write(self.json_reply({"error": "not found"}, close, "404 Not Found"))


async def serve(args: argparse.Namespace) -> None:
    upstream = Upstream(args.name, args.tokens, args.token_delay)
    server = await asyncio.start_server(upstream.handle, args.host, args.port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="a")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--token-delay", type=float, default=0.0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
