#!/usr/bin/env python3
"""A minimal RFC 7662 introspection endpoint for bench/run.sh: the dev-like opaque-token issuer.

  introspect_server.py PORT ISSUER AUDIENCE

POST /introspect (form `token=…`) answers 200 `active: true` for any token, with the claims the
bench JWTs carry (sub, aud, iss, exp one hour ahead, tenant_id acme, roles [reader]). A token of the
form `opq_<sub>_<anything>` gets that `sub`, so rotating opaque tokens are distinct users.
GET /stats answers {"calls": N, "distinct": M}: how many introspection calls citadel-authz made,
and for how many distinct tokens (the single-flight check of the burst scenario).
Loopback only; HTTP/1.1 keep-alive so that the call count is not inflated by reconnects.
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

PORT, ISSUER, AUDIENCE = int(sys.argv[1]), sys.argv[2], sys.argv[3]
lock = threading.Lock()
calls = 0
seen = set()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: the bench log would otherwise get a line per call
        pass

    def answer(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/stats":
            with lock:
                self.answer(200, {"calls": calls, "distinct": len(seen)})
        else:
            self.answer(404, {"error": "not_found"})

    def do_POST(self):
        global calls
        n = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(n).decode())
        token = (form.get("token") or [""])[0]
        if self.path != "/introspect" or not token:
            self.answer(400, {"error": "invalid_request"})
            return
        with lock:
            calls += 1
            seen.add(token)
        parts = token.split("_")
        sub = parts[1] if len(parts) >= 3 and parts[0] == "opq" else "user-0"
        self.answer(200, {"active": True, "sub": sub, "aud": AUDIENCE, "iss": ISSUER,
                          "exp": int(time.time()) + 3600, "tenant_id": "acme",
                          "roles": ["reader"], "token_type": "Bearer"})


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 1024
ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
