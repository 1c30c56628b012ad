"""A misbehaving OpenAI-compatible chat server on 127.0.0.1, run as its own process by the LLM
fault tests (it plays the server; the client under test is production's).

    python tests/dataprep/llm_fault_server.py --plan plan.json --log requests.jsonl --port-file P

``plan.json``::

    {"rules": [{"match": "<substring of the last user message>", "replies": ["500", "ok"],
                "caption": "<the caption an ok reply carries>"}],
     "default": {"replies": ["ok"], "caption": "a sound"},
     "die_after": null}

The n-th request matching a rule gets ``replies[n]`` (the last one repeats). Behaviours:
``ok``; ``500``/``503``/``429`` (that status); ``stall`` (answers after ``stall_s``);
``slow`` (headers at once, then the body one byte every ``trickle_s``); ``garbage`` (200 with
bytes that are not JSON); ``badjson`` (a chat reply whose content is not the JSON asked for);
``drop`` (closes the connection without an answer); ``die`` (the process exits at once).
``die_after: N`` makes request N + 1 a ``die``. Every request is logged before it is answered.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import threading
import time
from pathlib import Path
from typing import Any


class FaultServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, plan: dict[str, Any], log_path: Path, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.plan = plan
        self.log_path = log_path
        self.lock = threading.Lock()
        self.total = 0
        self.seen: dict[int, int] = {}  # rule index (-1: default) -> requests so far

    def decide(self, body: dict[str, Any]) -> tuple[str, str, str]:
        user = body["messages"][-1]["content"]
        rules = self.plan.get("rules", [])
        idx = next((i for i, r in enumerate(rules) if r["match"] in user), -1)
        rule = rules[idx] if idx >= 0 else self.plan["default"]
        with self.lock:
            n = self.seen.get(idx, 0)
            self.seen[idx] = n + 1
            self.total += 1
            behaviour = rule["replies"][min(n, len(rule["replies"]) - 1)]
            die_after = self.plan.get("die_after")
            if die_after is not None and self.total > die_after:
                behaviour = "die"
            record = {"n": self.total, "rule": rule.get("match", "*"), "behaviour": behaviour,
                      "seed": body.get("seed"), "prompt": user}  # fmt: skip
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
        return behaviour, rule.get("caption", "a sound"), user


class Handler(http.server.BaseHTTPRequestHandler):
    server: FaultServer
    protocol_version = "HTTP/1.1"  # keep-alive, as vLLM and llama.cpp speak it

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, raw: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:  # /v1/models: the readiness check of a starting server
        self._send(200, b'{"object": "list", "data": []}')

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        behaviour, caption, _ = self.server.decide(body)
        plan = self.server.plan
        ok = json.dumps(
            {"choices": [{"message": {"role": "assistant",
                                      "content": json.dumps({"caption": caption})}}]}
        ).encode()  # fmt: skip
        try:
            if behaviour == "die":
                os._exit(3)
            elif behaviour == "drop":
                self.close_connection = True
            elif behaviour in ("500", "503", "429"):
                self._send(int(behaviour), b'{"error": "scripted failure"}')
            elif behaviour == "stall":
                time.sleep(plan.get("stall_s", 5.0))
                self._send(200, ok)
            elif behaviour == "slow":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(ok)))
                self.end_headers()
                for i in range(len(ok)):
                    self.wfile.write(ok[i : i + 1])
                    self.wfile.flush()
                    time.sleep(plan.get("trickle_s", 0.05))
            elif behaviour == "garbage":
                self._send(200, b'\xff\xfe{"choices": [garbage')
            elif behaviour == "badjson":
                msg = {"role": "assistant", "content": "Sure! Here is a caption"}
                reply = {"choices": [{"message": msg}]}
                self._send(200, json.dumps(reply).encode())
            else:
                self._send(200, ok)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up first (its timeout)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--plan", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--port-file", required=True)
    p.add_argument("--port", type=int, default=0, help="0: a free one")
    args = p.parse_args()
    srv = FaultServer(json.loads(Path(args.plan).read_text()), Path(args.log), args.port)
    tmp = Path(args.port_file + ".tmp")
    tmp.write_text(str(srv.server_address[1]))
    tmp.replace(args.port_file)  # the test waits for this file: written whole or not at all
    srv.serve_forever()


if __name__ == "__main__":
    main()
