#!/usr/bin/env python3
"""The soak test's own identity provider (bench/soak.sh, issue #13): keys, tokens, JWKS,
introspection, and a control port through which the soak's fault schedule breaks them.

  soak_idp.py mint DIR --gens G --issuer ISS --audience AUD [--users N] [--new N] [--opaque N]
                       [--opaque-new N] [--storm N]
      Generation g (0..G-1) has its own ES256, RS256 and EdDSA keys (kids g<g>-es256, ...), so a
      rotation is a change of kid, as at a real IdP. Every generation's tokens are minted up front
      (the load client switches files when the schedule switches generation):
        DIR/g<g>/jwks.json    that generation's public keys
        DIR/g<g>/jwt.txt      N tokens, sub user-0..user-N-1, algorithms in turn (ES256, RS256, EdDSA)
        DIR/g<g>/new.txt      tokens of users nobody has seen (sub new-g<g>-<j>), ES256: each used once
        DIR/g<g>/hostile.txt  `kind<TAB>token`: expired, wrong aud/iss, nbf ahead, bad signature,
                              alg none, HS256 with the public key as secret, oversized, header
                              injection in claims, duplicate members, string exp, unknown crit, jku
      and DIR/storm.txt (tokens with a fresh unknown kid each, signed by a key nobody publishes),
      DIR/opaque.txt (opaque tokens of user-0..), DIR/opaque-new.txt (opaque tokens used once each),
      DIR/users.txt (every subject the membership database must know).

  soak_idp.py serve DIR --jwks-port P --intro-port P --ctl-port P --issuer ISS --audience AUD
                        [--max-age S]
      JWKS on 127.0.0.1:JWKS_PORT/jwks.json (the union of the published generations, Cache-Control
      max-age=S, one request per connection so that "down" is really down), RFC 7662 introspection
      on INTRO_PORT/introspect (any `opq_<sub>_<rest>` token is active for that sub), and control on
      CTL_PORT:
        POST /jwks/publish?gens=0,1   publish exactly these generations
        POST /jwks/down?mode=refuse|503|hang   refuse: the listening socket is closed (connection
                                       refused); 503: answers 503 + Retry-After; hang: accepts and
                                       never answers
        POST /jwks/up
        POST /intro/hang, POST /intro/ok   introspection calls wait (until /intro/ok) or answer
        GET  /stats                    JSON: every JWKS request (time, status), introspection calls,
                                       calls that hung, hits of the jku canary
      `GET /jku-canary.json` on the JWKS port counts hits: a token's `jku` must never be fetched.
Loopback only.
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing import Pool
from urllib.parse import parse_qs, urlparse

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ALGS = ("ES256", "RS256", "EdDSA")


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64j(obj):
    return b64u(json.dumps(obj, separators=(",", ":")).encode())


def int_bytes(n, length=None):
    length = length or (n.bit_length() + 7) // 8
    return n.to_bytes(length, "big")


class Key:
    def __init__(self, alg, kid):
        self.alg, self.kid = alg, kid
        if alg == "ES256":
            self.priv = ec.generate_private_key(ec.SECP256R1())
        elif alg == "RS256":
            self.priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            self.priv = ed25519.Ed25519PrivateKey.generate()

    def jwk(self):
        pub = self.priv.public_key()
        base = {"kid": self.kid, "alg": self.alg, "use": "sig"}
        if self.alg == "ES256":
            nums = pub.public_numbers()
            return {**base, "kty": "EC", "crv": "P-256", "x": b64u(int_bytes(nums.x, 32)),
                    "y": b64u(int_bytes(nums.y, 32))}
        if self.alg == "RS256":
            nums = pub.public_numbers()
            return {**base, "kty": "RSA", "n": b64u(int_bytes(nums.n)), "e": b64u(int_bytes(nums.e))}
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {**base, "kty": "OKP", "crv": "Ed25519", "x": b64u(raw)}

    def sign(self, data):
        if self.alg == "ES256":
            r, s = decode_dss_signature(self.priv.sign(data, ec.ECDSA(hashes.SHA256())))
            return int_bytes(r, 32) + int_bytes(s, 32)
        if self.alg == "RS256":
            return self.priv.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return self.priv.sign(data)

    def public_pem(self):
        return self.priv.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def mint(key, claims, header=None, payload_text=None):
    h = {"alg": key.alg, "typ": "JWT", "kid": key.kid, **(header or {})}
    signing = (b64j(h) + "." + (payload_text if payload_text is not None else b64j(claims))).encode()
    return signing.decode() + "." + b64u(key.sign(signing))


def claims_for(a, sub, now, **extra):
    return {"iss": a.issuer, "aud": a.audience, "sub": sub, "tenant_id": "acme", "roles": ["reader"],
            "iat": now, "exp": now + 12 * 3600, **extra}


def mint_generation(job):
    a, g = job
    out = os.path.join(a.dir, f"g{g}")
    os.makedirs(out, exist_ok=True)
    now = int(time.time())
    keys = {alg: Key(alg, f"g{g}-{alg.lower()}") for alg in ALGS}
    with open(os.path.join(out, "jwks.json"), "w") as f:
        json.dump({"keys": [k.jwk() for k in keys.values()]}, f)
    with open(os.path.join(out, "jwt.txt"), "w") as f:
        for i in range(a.users):
            f.write(mint(keys[ALGS[i % 3]], claims_for(a, f"user-{i}", now)) + "\n")
    with open(os.path.join(out, "new.txt"), "w") as f:
        for j in range(a.new):
            f.write(mint(keys["ES256"], claims_for(a, f"new-g{g}-{j}", now)) + "\n")
    es, rs = keys["ES256"], keys["RS256"]
    rogue = Key("ES256", es.kid)  # same kid as the real key, another key: a forged signature
    hostile = []
    for j in range(40):
        sub = f"user-{j}"
        c = claims_for(a, sub, now)
        hostile += [
            ("expired", mint(es, {**c, "iat": now - 7200, "exp": now - 3600})),
            ("wrong_aud", mint(es, {**c, "aud": "https://other.api.local"})),
            ("wrong_iss", mint(es, {**c, "iss": "https://evil.idp.local"})),
            ("nbf_future", mint(es, {**c, "nbf": now + 24 * 3600})),
            ("bad_signature", mint(rogue, c)),
            ("alg_none", b64j({"alg": "none", "typ": "JWT", "kid": es.kid}) + "." + b64j(c) + "."),
            ("hs256_pubkey", hs256(rs, c)),
            ("oversized", mint(es, {**c, "pad": "A" * 9000})),
            ("role_injection", mint(es, {**c, "roles": ["reader,admin"]})),
            ("sub_comma", mint(es, {**c, "sub": "user-1,admin"})),
            ("exp_string", mint(es, {**c, "exp": str(now + 3600)})),
            ("exp_huge", mint(es, {}, payload_text=b64u(json.dumps(c).replace(
                str(now + 12 * 3600), "1e300").encode()))),
            ("duplicate_sub", mint(es, {}, payload_text=b64u(
                (json.dumps(c)[:-1] + ', "sub": "admin"}').encode()))),
            ("crit_unknown", mint(es, c, header={"crit": ["x-unknown"], "x-unknown": 1})),
            ("jku_rogue", mint(rogue, c, header={"jku": f"http://127.0.0.1:{a.jwks_port}/jku-canary.json"})),
        ]
    with open(os.path.join(out, "hostile.txt"), "w") as f:
        for kind, tok in hostile:
            f.write(f"{kind}\t{tok}\n")
    return g


def hs256(rsa_key, claims):
    """HS256 with the RSA public key's PEM as the HMAC secret: the classic alg confusion."""
    h = {"alg": "HS256", "typ": "JWT", "kid": rsa_key.kid}
    signing = (b64j(h) + "." + b64j(claims)).encode()
    return signing.decode() + "." + b64u(hmac.new(rsa_key.public_pem(), signing, hashlib.sha256).digest())


def cmd_mint(a):
    os.makedirs(a.dir, exist_ok=True)
    with Pool(min(os.cpu_count() or 1, a.gens)) as pool:
        for g in pool.imap_unordered(mint_generation, [(a, g) for g in range(a.gens)]):
            print(f"soak_idp: generation {g} minted", file=sys.stderr)
    now = int(time.time())
    rogue = Key("ES256", "x")
    rnd = os.urandom(6).hex()
    with open(os.path.join(a.dir, "storm.txt"), "w") as f:
        for i in range(a.storm):
            rogue.kid = f"storm-{i}-{rnd}"
            f.write(mint(rogue, claims_for(a, f"user-{i % a.users}", now)) + "\n")
    with open(os.path.join(a.dir, "opaque.txt"), "w") as f:
        for i in range(a.opaque):
            f.write(f"opq_user-{i}_{rnd}\n")
    with open(os.path.join(a.dir, "opaque-new.txt"), "w") as f:
        for j in range(a.opaque_new):
            f.write(f"opq_user-{j % a.users}_{rnd}n{j}\n")
    with open(os.path.join(a.dir, "users.txt"), "w") as f:
        for i in range(a.users):
            f.write(f"user-{i}\n")
        for g in range(a.gens):
            for j in range(a.new):
                f.write(f"new-g{g}-{j}\n")


# --- serve -------------------------------------------------------------------------------------

class State:
    def __init__(self, a):
        self.a = a
        self.lock = threading.Lock()
        self.jwks = {}
        for name in sorted(os.listdir(a.dir)):
            p = os.path.join(a.dir, name, "jwks.json")
            if name.startswith("g") and os.path.exists(p):
                with open(p) as f:
                    self.jwks[int(name[1:])] = json.load(f)["keys"]
        self.published = [0]
        self.body = b""
        self.publish([0])
        self.jwks_mode = "up"
        self.fetches = []  # [unix time, status] per JWKS request (refused ones never arrive)
        self.jku_hits = 0
        self.intro_calls = 0
        self.intro_hung = 0
        self.intro_release = threading.Event()
        self.intro_release.set()
        self.jwks_release = threading.Event()
        self.jwks_release.set()

    def publish(self, gens):
        keys = [k for g in gens for k in self.jwks[g]]
        with self.lock:
            self.published = list(gens)
            self.body = json.dumps({"keys": keys}).encode()


def quiet_handler(base):
    class H(base):
        def log_message(self, *args):
            pass

        def answer(self, code, body, ctype="application/json", extra=()):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
    return H


def jwks_handler(st):
    class H(quiet_handler(BaseHTTPRequestHandler)):
        protocol_version = "HTTP/1.0"  # one request per connection: "down" leaves nothing open

        def do_GET(self):
            if self.path.startswith("/jku-canary"):
                with st.lock:
                    st.jku_hits += 1
                self.answer(404, b"{}")
                return
            mode = st.jwks_mode
            if mode == "hang":
                with st.lock:
                    st.fetches.append([time.time(), "hang"])
                st.jwks_release.wait(600)
                return
            if mode == "503":
                with st.lock:
                    st.fetches.append([time.time(), 503])
                self.answer(503, b'{"error":"down"}', extra=[("Retry-After", "5")])
                return
            with st.lock:
                st.fetches.append([time.time(), 200])
                body = st.body
            self.answer(200, body, extra=[("Cache-Control", f"public, max-age={st.a.max_age}")])
    return H


def intro_handler(st):
    a = st.a

    class H(quiet_handler(BaseHTTPRequestHandler)):
        protocol_version = "HTTP/1.1"
        timeout = 30  # an idle keep-alive connection is closed after 30 s, as real servers do

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(n).decode())
            token = (form.get("token") or [""])[0]
            with st.lock:
                st.intro_calls += 1
            if not st.intro_release.is_set():
                with st.lock:
                    st.intro_hung += 1
                st.intro_release.wait(600)
                self.close_connection = True
                return
            if self.path != "/introspect" or not token:
                self.answer(400, b'{"error":"invalid_request"}')
                return
            parts = token.split("_")
            if len(parts) < 3 or parts[0] != "opq":
                self.answer(200, b'{"active":false}')
                return
            self.answer(200, json.dumps({
                "active": True, "sub": parts[1], "aud": a.audience, "iss": a.issuer,
                "exp": int(time.time()) + 3600, "tenant_id": "acme", "roles": ["reader"],
                "token_type": "Bearer"}).encode())
    return H


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True


class Jwks:
    """The JWKS listener, which can be closed (connection refused) and reopened on its port."""

    def __init__(self, st):
        self.st, self.srv, self.thread = st, None, None
        self.open()

    def open(self):
        if self.srv is None:
            self.srv = Server(("127.0.0.1", self.st.a.jwks_port), jwks_handler(self.st))
            self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
            self.thread.start()

    def close(self):
        if self.srv is not None:
            self.srv.shutdown()
            self.srv.server_close()
            self.srv = None


def ctl_handler(st, jwks):
    class H(quiet_handler(BaseHTTPRequestHandler)):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)
            u = urlparse(self.path)
            q = {k: v[0] for k, v in parse_qs(u.query).items()}
            if u.path == "/jwks/publish":
                st.publish([int(g) for g in q["gens"].split(",")])
            elif u.path == "/jwks/down":
                mode = q.get("mode", "refuse")
                if mode == "refuse":
                    jwks.close()
                elif mode == "hang":
                    st.jwks_release.clear()
                st.jwks_mode = mode
            elif u.path == "/jwks/up":
                st.jwks_mode = "up"
                st.jwks_release.set()
                jwks.open()
            elif u.path == "/intro/hang":
                st.intro_release.clear()
            elif u.path == "/intro/ok":
                st.intro_release.set()
            else:
                self.answer(404, b"{}")
                return
            self.answer(200, b'{"ok":true}')

        def do_GET(self):
            if self.path != "/stats":
                self.answer(404, b"{}")
                return
            with st.lock:
                body = json.dumps({
                    "published": st.published, "jwks_mode": st.jwks_mode,
                    "jwks_fetches": st.fetches, "jku_hits": st.jku_hits,
                    "intro_calls": st.intro_calls, "intro_hung": st.intro_hung}).encode()
            self.answer(200, body)
    return H


def cmd_serve(a):
    st = State(a)
    jwks = Jwks(st)
    intro = Server(("127.0.0.1", a.intro_port), intro_handler(st))
    threading.Thread(target=intro.serve_forever, daemon=True).start()
    Server(("127.0.0.1", a.ctl_port), ctl_handler(st, jwks)).serve_forever()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mint")
    m.add_argument("dir")
    m.add_argument("--gens", type=int, required=True)
    m.add_argument("--users", type=int, default=10000)
    m.add_argument("--new", type=int, default=1000)
    m.add_argument("--opaque", type=int, default=1000)
    m.add_argument("--opaque-new", type=int, default=10000)
    m.add_argument("--storm", type=int, default=10000)
    for s in (m,):
        s.add_argument("--issuer", required=True)
        s.add_argument("--audience", required=True)
        s.add_argument("--jwks-port", type=int, required=True)
    s = sub.add_parser("serve")
    s.add_argument("dir")
    s.add_argument("--issuer", required=True)
    s.add_argument("--audience", required=True)
    s.add_argument("--jwks-port", type=int, required=True)
    s.add_argument("--intro-port", type=int, required=True)
    s.add_argument("--ctl-port", type=int, required=True)
    s.add_argument("--max-age", type=int, default=30)
    a = p.parse_args()
    socket.setdefaulttimeout(None)
    cmd_mint(a) if a.cmd == "mint" else cmd_serve(a)


if __name__ == "__main__":
    main()
