#!/usr/bin/env python3
"""A stand-in LiteLLM for `./test.sh cli-env`: answers the real CLIs in the
cligate-cli-env image with one fixed reply, in whichever dialect they speak
(OpenAI responses and chat completions, Anthropic messages, Gemini
generateContent), and logs each request (path, credentials, model) as one
JSON line.

usage: fake_llm.py PORT LOGFILE     (listens on 127.0.0.1 only)
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = "FAKE-ANSWER-42"


def sse(events):
    out = []
    for event, data in events:
        if event:
            out.append("event: %s\n" % event)
        out.append("data: %s\n\n" % (data if isinstance(data, str) else json.dumps(data)))
    return "".join(out).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _log(self, body):
        try:
            model = json.loads(body).get("model")
        except Exception:
            model = None
        with open(LOG, "a") as f:
            f.write(json.dumps({
                "method": self.command,
                "path": self.path,
                "authorization": self.headers.get("authorization"),
                "x-api-key": self.headers.get("x-api-key"),
                "x-goog-api-key": self.headers.get("x-goog-api-key"),
                "model": model,
            }) + "\n")

    def _send(self, code, ctype, data):
        self.send_response(code)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._log(b"")
        body = {"object": "list", "data": [{"id": "gpt-4o", "object": "model"}]}
        self._send(200, "application/json", json.dumps(body).encode())

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self._log(body)
        try:
            req = json.loads(body)
        except Exception:
            req = {}
        path = self.path
        model = req.get("model")
        now = int(time.time())
        if "/responses" in path:
            item = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": ANSWER, "annotations": []}]}
            usage = {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2,
                     "input_tokens_details": {"cached_tokens": 0},
                     "output_tokens_details": {"reasoning_tokens": 0}}
            return self._send(200, "text/event-stream", sse([
                ("response.created", {"type": "response.created",
                                      "response": {"id": "resp_1", "status": "in_progress", "output": []}}),
                ("response.output_item.added", {"type": "response.output_item.added", "output_index": 0,
                                                "item": dict(item, status="in_progress", content=[])}),
                ("response.output_text.delta", {"type": "response.output_text.delta", "item_id": "msg_1",
                                                "output_index": 0, "content_index": 0, "delta": ANSWER}),
                ("response.output_item.done", {"type": "response.output_item.done", "output_index": 0,
                                               "item": item}),
                ("response.completed", {"type": "response.completed",
                                        "response": {"id": "resp_1", "status": "completed",
                                                     "output": [item], "usage": usage}}),
            ]))
        if "/chat/completions" in path:
            if req.get("stream"):
                chunk = {"id": "c1", "object": "chat.completion.chunk", "created": now, "model": model,
                         "choices": [{"index": 0, "delta": {"role": "assistant", "content": ANSWER},
                                      "finish_reason": None}]}
                final = {"id": "c1", "object": "chat.completion.chunk", "created": now, "model": model,
                         "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
                return self._send(200, "text/event-stream", sse([(None, chunk), (None, final), (None, "[DONE]")]))
            reply = {"id": "c1", "object": "chat.completion", "created": now, "model": model,
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
            return self._send(200, "application/json", json.dumps(reply).encode())
        if "/messages" in path:
            if "count_tokens" in path:
                return self._send(200, "application/json", b'{"input_tokens": 1}')
            msg = {"id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}
            if req.get("stream"):
                return self._send(200, "text/event-stream", sse([
                    ("message_start", {"type": "message_start", "message": msg}),
                    ("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}}),
                    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta", "text": ANSWER}}),
                    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                    ("message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                       "usage": {"output_tokens": 1}}),
                    ("message_stop", {"type": "message_stop"}),
                ]))
            msg["content"] = [{"type": "text", "text": ANSWER}]
            msg["stop_reason"] = "end_turn"
            return self._send(200, "application/json", json.dumps(msg).encode())
        if "countTokens" in path:
            return self._send(200, "application/json", b'{"totalTokens": 1}')
        if "generatecontent" in path.lower():
            reply = {"candidates": [{"content": {"role": "model", "parts": [{"text": ANSWER}]},
                                     "finishReason": "STOP", "index": 0}],
                     "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2}}
            if "streamGenerateContent" in path:
                return self._send(200, "text/event-stream", sse([(None, reply)]))
            return self._send(200, "application/json", json.dumps(reply).encode())
        self._send(404, "application/json", b'{"error": "unknown path"}')


if __name__ == "__main__":
    PORT, LOG = int(sys.argv[1]), sys.argv[2]
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
