#!/usr/bin/env python3
"""Differential probe: raw HTTP/1.1 through nginx, the tower-lb gateway (and HAProxy if
installed) to a recording Python backend.

    python3 scripts/http-diff/run.py [case-name-substring ...]

Writes results.json and results.txt to $HTTP_DIFF_OUT (default: a directory under /tmp). Every process it starts is
stopped by its PID at exit. Everything listens on 127.0.0.1.
"""
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import atexit
import socket
import hashlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import backend  # noqa: E402
from client import exchange, parse_responses  # noqa: E402

GW = os.environ.get("GATEWAY", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "target", "release", "examples", "gateway"))
B1, B2 = 27101, 27102
PORTS = {"nginx": 27110, "gateway": 27111, "haproxy": 27112}
WORK = os.environ.get("HTTP_DIFF_WORK", "/tmp/tower-lb-http-diff/work")
OUT = os.environ.get("HTTP_DIFF_OUT", "/tmp/tower-lb-http-diff/out")
PROCS = {}


def nginx_conf():
    common_loc = """
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-Proto $scheme;"""
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {WORK}/nginx.pid;
error_log {WORK}/nginx.error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {WORK}/nginx.access.log;
    client_body_temp_path {WORK}/body;
    proxy_temp_path {WORK}/proxy;
    fastcgi_temp_path {WORK}/fastcgi;
    uwsgi_temp_path {WORK}/uwsgi;
    scgi_temp_path {WORK}/scgi;
    upstream backends {{
        server 127.0.0.1:{B1};
        {"" if os.environ.get("SINGLE_BACKEND") else f"server 127.0.0.1:{B2};"}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{PORTS['nginx']};
        # The reference configuration (scripts/proxy-vs-nginx.sh).
        location / {{{common_loc}
            proxy_set_header Connection "";
        }}
        # The usual nginx WebSocket recipe, for the upgrade case only.
        location /101ws {{{common_loc}
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
        }}
    }}
}}
"""


def haproxy_conf():
    return f"""global
    maxconn 256
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    option forwardfor
    option http-keep-alive
frontend fe
    bind 127.0.0.1:{PORTS['haproxy']}
    default_backend be
backend be
    balance roundrobin
    server b1 127.0.0.1:{B1}
    server b2 127.0.0.1:{B2}
"""


def wait_port(port, t=10):
    end = time.time() + t
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def start(name):
    if name == "nginx":
        for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(f"{WORK}/{d}", exist_ok=True)
        with open(f"{WORK}/nginx.conf", "w") as f:
            f.write(nginx_conf())
        cmd = ["nginx", "-p", WORK, "-c", f"{WORK}/nginx.conf"]
    elif name == "gateway":
        cmd = [GW, "--listen", f"127.0.0.1:{PORTS['gateway']}", "--backend", f"http://127.0.0.1:{B1}"]
        if not os.environ.get("SINGLE_BACKEND"):
            cmd += ["--backend", f"http://127.0.0.1:{B2}"]
    else:
        with open(f"{WORK}/haproxy.cfg", "w") as f:
            f.write(haproxy_conf())
        cmd = ["haproxy", "-db", "-f", f"{WORK}/haproxy.cfg"]
    log = open(f"{WORK}/{name}.out", "ab")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    PROCS[name] = p
    with open(f"{WORK}/pids", "a") as f:
        f.write(f"{name} {p.pid}\n")
    if not wait_port(PORTS[name]):
        raise SystemExit(f"{name} did not start; see {WORK}/{name}.out")


def stop(name):
    p = PROCS.pop(name, None)
    if p is None:
        return
    try:
        os.kill(p.pid, signal.SIGTERM)  # only the PID we started
    except ProcessLookupError:
        return
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=5)


def stop_all():
    for n in list(PROCS):
        stop(n)


H = b"Host: test.local\r\n"
PROBE = b"GET /probe HTTP/1.1\r\nHost: test.local\r\nX-Probe: 1\r\n\r\n"


def req(line, headers=b"", body=b"", host=True):
    return line + b"\r\n" + (H if host else b"") + headers + b"\r\n" + body


def chunk(data):
    return b"%x\r\n" % len(data) + data + b"\r\n"


GZ = gzip.compress(b"hello, gzip transfer coding")
CASES = []


def case(name, parts, methods=("GET",), desc="", probe=True, fresh=False, idle=1.0, total=6.0,
         wait_100=False, check=None):
    if isinstance(parts, bytes):
        parts = [parts]
    CASES.append(dict(name=name, parts=parts, methods=list(methods), desc=desc, probe=probe, fresh=fresh,
                      idle=idle, total=total, wait_100=wait_100, check=check))


# ---- framing / parsing of requests
case("baseline-get", req(b"GET /echo HTTP/1.1"))
case("cl-and-te", req(b"POST /echo HTTP/1.1",
                      b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
     methods=("POST",), desc="both CL and TE (body is a valid empty chunked body, CL=4)")
case("cl-te-smuggle", req(b"POST /echo HTTP/1.1",
                          b"Content-Length: 42\r\nTransfer-Encoding: chunked\r\n",
                          b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nX-Ignore: x"),
     methods=("POST", "GET"), desc="classic CL.TE: CL covers a smuggled prefix after the 0-chunk")
case("te-cl-smuggle", req(b"POST /echo HTTP/1.1",
                          b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
                          b"2c\r\nGET /smuggled HTTP/1.1\r\nHost: test.local\r\n\r\n\r\n0\r\n\r\n"),
     methods=("POST", "GET"), desc="classic TE.CL: chunk body holds a request, CL=4")
case("te-space-colon", req(b"POST /echo HTTP/1.1",
                           b"Content-Length: 5\r\nTransfer-Encoding : chunked\r\n", b"0\r\n\r\n"),
     methods=("POST",), desc="'Transfer-Encoding : chunked' (space before colon) plus CL")
case("te-xchunked", req(b"POST /echo HTTP/1.1", b"Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n", b"hello"),
     methods=("POST",), desc="unknown transfer coding 'xchunked' + CL")
case("te-only-unknown", req(b"POST /echo HTTP/1.1", b"Transfer-Encoding: gzip\r\n", GZ),
     methods=("POST",), desc="TE: gzip only (no chunked): length cannot be determined -> 400")
case("dup-cl-differ", req(b"POST /echo HTTP/1.1", b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"),
     methods=("POST",))
case("dup-cl-same", req(b"POST /echo HTTP/1.1", b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"),
     methods=("POST",))
case("cl-list-same", req(b"POST /echo HTTP/1.1", b"Content-Length: 5, 5\r\n", b"hello"), methods=("POST",))
case("cl-plus", req(b"POST /echo HTTP/1.1", b"Content-Length: +5\r\n", b"hello"), methods=("POST",))
case("te-gzip-chunked", req(b"POST /echo HTTP/1.1", b"Transfer-Encoding: gzip, chunked\r\n",
                            chunk(GZ) + b"0\r\n\r\n"), methods=("POST",),
     desc="body is gzip data, chunked; a proxy that decodes chunked must keep 'gzip' or refuse")
case("te-chunked-gzip", req(b"POST /echo HTTP/1.1", b"Transfer-Encoding: chunked, gzip\r\n",
                            chunk(b"hello") + b"0\r\n\r\n"), methods=("POST",),
     desc="chunked not last in a request: RFC 9112 6.3 says 400 + close")
case("te-chunked-twice", req(b"POST /echo HTTP/1.1", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                             chunk(b"hello") + b"0\r\n\r\n"), methods=("POST",))
case("chunk-ext-trailer", req(b"POST /echo HTTP/1.1", b"Transfer-Encoding: chunked\r\nTrailer: X-T\r\n",
                              b"5;ext=1;q=\"a\"\r\nhello\r\n6\r\n world\r\n0\r\nX-T: trailer-value\r\n\r\n"),
     methods=("POST",), desc="chunk extensions and a trailer field")
case("chunk-bare-lf", req(b"POST /echo HTTP/1.1", b"Transfer-Encoding: chunked\r\n",
                          b"5\nhello\n0\n\n"), methods=("POST",), desc="chunk lines ended by bare LF")
case("chunk-size-overflow", req(b"POST /echo HTTP/1.1", b"Transfer-Encoding: chunked\r\n",
                                b"10000000000000005\r\nhello\r\n0\r\n\r\n"), methods=("POST",))
case("chunk-size-0x", req(b"POST /echo HTTP/1.1", b"Transfer-Encoding: chunked\r\n",
                          b"0x5\r\nhello\r\n0\r\n\r\n"), methods=("POST",))
case("http10-te-chunked", req(b"POST /echo HTTP/1.0", b"Transfer-Encoding: chunked\r\n",
                              chunk(b"hello") + b"0\r\n\r\n"), methods=("POST",),
     desc="RFC 9112 6.1: TE in HTTP/1.0 => framing faulty, close after")
case("obs-fold", req(b"GET /echo HTTP/1.1", b"X-Fold: first\r\n second\r\n"))
case("space-before-colon", req(b"GET /echo HTTP/1.1", b"X-Sp : v\r\n"))
case("header-name-ctl", req(b"GET /echo HTTP/1.1", b"X-A\x01b: v\r\n"))
case("bare-cr-in-value", req(b"GET /echo HTTP/1.1", b"X-CR: a\rb\r\n"))
case("nul-in-value", req(b"GET /echo HTTP/1.1", b"X-NUL: a\x00b\r\n"))
case("bare-lf-lines", b"GET /echo HTTP/1.1\nHost: test.local\nX-LF: 1\n\n")
case("get-with-body", req(b"GET /echo HTTP/1.1", b"Content-Length: 5\r\n", b"hello"))
# ---- request target / host
case("absolute-form", req(b"GET http://other.example/x HTTP/1.1", b"", host=True).replace(b"GET http://other.example/x", b"GET http://other.example/echo"))
case("absolute-form-userinfo", req(b"GET http://user:pw@other.example/echo HTTP/1.1"))
case("host-missing-11", req(b"GET /echo HTTP/1.1", host=False))
case("host-missing-10", req(b"GET /echo HTTP/1.0", host=False), probe=False)
case("host-dup", req(b"GET /echo HTTP/1.1", b"Host: evil.example\r\n"))
case("host-bad", b"GET /echo HTTP/1.1\r\nHost: a b\r\n\r\n")
case("host-comma", b"GET /echo HTTP/1.1\r\nHost: evil.example,test.local\r\n\r\n")
case("host-userinfo", b"GET /echo HTTP/1.1\r\nHost: u@test.local\r\n\r\n")
case("options-star", req(b"OPTIONS * HTTP/1.1"), methods=("OPTIONS",))
case("connect", req(b"CONNECT test.local:443 HTTP/1.1"), methods=("CONNECT",))
case("trace", req(b"TRACE /echo HTTP/1.1"), methods=("TRACE",))
case("dotdot", req(b"GET /a/../echo HTTP/1.1"))
case("pct-encoded", req(b"GET /echo/%2e%2e/x%2Fy?q=%20 HTTP/1.1"))
case("fragment-in-target", req(b"GET /echo#frag HTTP/1.1"))
case("lowercase-method", req(b"get /echo HTTP/1.1"))
case("unknown-method", req(b"PROPFIND /echo HTTP/1.1"), methods=("PROPFIND",))
case("http09", b"GET /echo\r\n", probe=False)
case("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", probe=False)
case("version-1.2", req(b"GET /echo HTTP/1.2"))
case("uri-16k", req(b"GET /echo?" + b"a" * 16384 + b" HTTP/1.1"))
case("uri-64k", req(b"GET /echo?" + b"a" * 65536 + b" HTTP/1.1"))
case("headers-32k", req(b"GET /echo HTTP/1.1", b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(32))))
case("headers-100k", req(b"GET /echo HTTP/1.1", b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(100))))
case("one-header-12k", req(b"GET /echo HTTP/1.1", b"X-Big: " + b"v" * 12000 + b"\r\n"))
case("headers-count-99", req(b"GET /echo HTTP/1.1", b"".join(b"X-H%d: v\r\n" % i for i in range(98))))
case("headers-count-200", req(b"GET /echo HTTP/1.1", b"".join(b"X-H%d: v\r\n" % i for i in range(200))))
# ---- connection management
case("http10-no-ka", req(b"GET /echo HTTP/1.0"))
case("http10-ka", req(b"GET /echo HTTP/1.0", b"Connection: keep-alive\r\n"))
case("conn-close", req(b"GET /echo HTTP/1.1", b"Connection: close\r\n"))
case("conn-foo", req(b"GET /echo HTTP/1.1", b"Connection: foo\r\nFoo: bar\r\n"),
     desc="Foo is listed in Connection: hop-by-hop, must not be forwarded (RFC 9110 7.6.1)")
case("conn-ka-hop-headers", req(b"GET /echo HTTP/1.1",
                                b"Connection: keep-alive, x-secret\r\nKeep-Alive: timeout=5\r\nX-Secret: s\r\n"
                                b"Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n"))
case("te-trailers", req(b"GET /echo HTTP/1.1", b"TE: trailers\r\n"))
case("te-trailers-chunked-resp", req(b"GET /chunked HTTP/1.1", b"TE: trailers\r\n"))
case("xff-present", req(b"GET /echo HTTP/1.1", b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\n"
                                              b"X-Forwarded-Proto: https\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n"))
case("pipelined-2", req(b"GET /echo?1 HTTP/1.1") + req(b"GET /echo?2 HTTP/1.1"), methods=("GET", "GET"))
case("pipelined-post-get", req(b"POST /echo?1 HTTP/1.1", b"Content-Length: 5\r\n", b"hello") + req(b"GET /echo?2 HTTP/1.1"),
     methods=("POST", "GET"))
case("expect-100", [req(b"POST /echo HTTP/1.1", b"Content-Length: 5\r\nExpect: 100-continue\r\n"), 1.5, b"hello"],
     methods=("POST",), wait_100=True, desc="head, wait up to 1.5 s for 100 Continue, then the body")
case("expect-100-nobody-sent", req(b"POST /echo HTTP/1.1", b"Content-Length: 5\r\nExpect: 100-continue\r\n"),
     methods=("POST",), probe=False, idle=2.5, desc="client never sends the body")
case("expect-unknown", req(b"POST /echo HTTP/1.1", b"Content-Length: 5\r\nExpect: something\r\n", b"hello"),
     methods=("POST",))
case("upgrade-ws-ref", [req(b"GET /101 HTTP/1.1", b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
                                                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"),
                        0.7, b"ping-through-tunnel"], probe=False,
     desc="reference nginx location (no Upgrade passing)")
case("upgrade-ws", [req(b"GET /101ws HTTP/1.1", b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
                                                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"),
                    0.7, b"ping-through-tunnel"], probe=False,
     desc="nginx location with the standard websocket recipe")
case("upgrade-h2c", req(b"GET /echo HTTP/1.1", b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"))
case("upgrade-ws-post-body", [req(b"POST /101ws HTTP/1.1", b"Connection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n", b"hello"),
                              0.7, b"after"], probe=False, methods=("POST",))
# ---- HEAD / special statuses / responses
case("head-echo", req(b"HEAD /echo HTTP/1.1"), methods=("HEAD",))
case("head-chunked", req(b"HEAD /chunked HTTP/1.1"), methods=("HEAD",))
case("head-test", req(b"HEAD /head-test HTTP/1.1"), methods=("HEAD",))
case("get-chunked", req(b"GET /chunked HTTP/1.1"))
case("resp-204", req(b"GET /204 HTTP/1.1"))
case("resp-304", req(b"GET /304 HTTP/1.1", b"If-None-Match: \"v1\"\r\n"))
case("resp-100-unsolicited", req(b"GET /100 HTTP/1.1"))
case("resp-103", req(b"GET /103 HTTP/1.1"))
case("resp-hop", req(b"GET /hop HTTP/1.1"))
case("resp-set-cookie-x2", req(b"GET /setcookie2 HTTP/1.1"))
case("resp-close", req(b"GET /close HTTP/1.1"))
case("resp-no-len", req(b"GET /no-len HTTP/1.1"))
case("resp-no-len-http10", req(b"GET /no-len HTTP/1.0", b"Connection: keep-alive\r\n"))
case("resp-dup-cl", req(b"GET /dup-cl HTTP/1.1"), fresh=True)
case("resp-dup-cl-same", req(b"GET /dup-cl-same HTTP/1.1"))
case("resp-te-cl", req(b"GET /te-cl HTTP/1.1"))
case("resp-gzip-te", req(b"GET /gzip-te HTTP/1.1"))
case("resp-fold", req(b"GET /resp-fold HTTP/1.1"))
case("resp-space-colon", req(b"GET /resp-space HTTP/1.1"), fresh=True)
case("resp-big-1mib", req(b"GET /big HTTP/1.1"), total=15)
case("resp-slow-2s", req(b"GET /slow HTTP/1.1"), idle=3.0, total=8)
case("ka-close-then-get", [req(b"GET /ka-close HTTP/1.1"), 0.5, req(b"GET /echo?after HTTP/1.1")],
     methods=("GET", "GET"), desc="backend closes a connection it answered as keep-alive; next GET")
case("ka-close-then-post", [req(b"GET /ka-close HTTP/1.1"), 0.5,
                            req(b"POST /echo?after HTTP/1.1", b"Content-Length: 5\r\n", b"hello")],
     methods=("GET", "POST"), desc="same, then a POST (non-idempotent) on the stale pooled connection")
# ---- failure handling (fresh proxies, passive health is stateful)
case("get-502", req(b"GET /502 HTTP/1.1"), fresh=True)
case("post-502", req(b"POST /502 HTTP/1.1", b"Content-Length: 11\r\n", b"post-body-1"), methods=("POST",), fresh=True)
case("put-503", req(b"PUT /503 HTTP/1.1", b"Content-Length: 11\r\n", b"put-body-11"), methods=("PUT",), fresh=True)
case("resp-short", req(b"GET /short HTTP/1.1"), fresh=True)
case("resp-chunk-trunc", req(b"GET /chunk-trunc HTTP/1.1"), fresh=True)
case("resp-overlong-poison", [req(b"GET /overlong HTTP/1.1"), 0.5, req(b"GET /echo?next1 HTTP/1.1"),
                              0.5, req(b"GET /echo?next2 HTTP/1.1")],
     methods=("GET", "GET", "GET"), fresh=True,
     desc="backend sends 10 bytes past its Content-Length, shaped like a response; do later requests get it?")


def summarize_backend(recs):
    out = []
    for r in recs:
        out.append(dict(port=r["port"], conn=r["conn"], reqline=r["reqline"],
                        head=r["head"].decode("latin1"), raw_body=r["raw_body"][:3000].decode("latin1"),
                        body_len=len(r["body"]), tunnel=r.get("tunnel", b"").decode("latin1")))
    return out


def summarize_resp(resps):
    out = []
    for r in resps:
        if r.get("status") is None:
            out.append(dict(status=None, garbage=r.get("garbage", b"").decode("latin1")))
            continue
        body = r.get("body", b"")
        d = dict(status=r["status"], version=r["version"], head=r["head"], framing=r.get("framing"),
                 complete=r.get("complete"), body_len=len(body),
                 body=body[:1500].decode("latin1"), trailers=r.get("trailers"))
        if len(body) == len(backend.BIG):
            d["big_sha_ok"] = hashlib.sha256(body).hexdigest() == backend.BIG_SHA
        if "tunnel" in r:
            d["tunnel"] = r["tunnel"].decode("latin1")
        out.append(d)
    return out


def run_case(c, proxy):
    if c["fresh"]:
        stop(proxy)
        start(proxy)
    backend.clear()
    got, closed, err, probe = exchange(PORTS[proxy], c["parts"], idle=c["idle"], total=c["total"],
                                       wait_100=c["wait_100"], after=PROBE if c["probe"] else None,
                                       methods=c["methods"])
    time.sleep(0.3)
    recs = backend.snapshot()
    res = dict(proxy=proxy, closed=closed, error=err, raw=got[:4000].decode("latin1"),
               raw_len=len(got), responses=summarize_resp(parse_responses(got, c["methods"])),
               backend=summarize_backend(recs))
    if probe is not None:
        pr = parse_responses(probe, ["GET"])
        res["probe"] = dict(raw=probe[:1500].decode("latin1"), responses=summarize_resp(pr))
        # Kept = the follow-up got exactly one response, and it is the probe's own echo.
        res["kept"] = bool(pr) and pr[0].get("status") == 200 and b"x-probe: 1" in pr[0].get("body", b"").lower()
        res["probe_desync"] = bool(pr) and pr[0].get("status") is not None and not res["kept"]
    else:
        res["kept"] = None if not closed else False
    return res


def brief(res):
    st = [r["status"] for r in res["responses"]]
    s = f"status={st} closed={res['closed']} kept={res['kept']}"
    if res.get("probe_desync"):
        s += " PROBE-DESYNC"
    s += f" backend_reqs={len(res['backend'])}"
    return s


def main():
    only = sys.argv[1:]
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    os.makedirs(OUT, exist_ok=True)
    backend.serve(B1)
    backend.serve(B2)
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))
    proxies = ["nginx", "gateway"] + (["haproxy"] if shutil.which("haproxy") else [])
    for p in proxies:
        start(p)
    results = []
    for c in CASES:
        if only and not any(o in c["name"] for o in only):
            continue
        row = dict(name=c["name"], desc=c["desc"],
                   sent=[p.decode("latin1") if isinstance(p, bytes) else p for p in c["parts"]], by={})
        for p in proxies:
            try:
                row["by"][p] = run_case(c, p)
            except Exception as e:  # noqa: BLE001
                row["by"][p] = dict(proxy=p, exception=repr(e), responses=[], backend=[], closed=None, kept=None)
        results.append(row)
        print(f"== {c['name']}")
        for p in proxies:
            r = row["by"][p]
            print(f"   {p:8s} " + (brief(r) if "exception" not in r else r["exception"]))
        sys.stdout.flush()
    with open(f"{OUT}/results.json", "w") as f:
        json.dump(results, f, indent=1)
    with open(f"{OUT}/results.txt", "w") as f:
        for row in results:
            f.write(f"\n######## {row['name']}  {row['desc']}\n")
            f.write("SENT: " + repr(row["sent"])[:600] + "\n")
            for p, r in row["by"].items():
                f.write(f"--- {p}: " + (brief(r) if "exception" not in r else r["exception"]) + "\n")
                for resp in r["responses"]:
                    f.write("  RESP " + repr({k: (v[:300] if isinstance(v, str) else v) for k, v in resp.items()
                                             if k not in ("body",)}) + "\n")
                    if resp.get("body"):
                        f.write("  BODY " + repr(resp["body"][:700]) + "\n")
                for b in r["backend"]:
                    f.write("  BACKEND " + repr(b["head"][:900]) + " body=" + repr(b["raw_body"][:200])
                            + (" tunnel=" + repr(b["tunnel"][:100]) if b.get("tunnel") else "") + "\n")
                if r.get("probe"):
                    f.write("  PROBE " + repr(r["probe"]["raw"][:200]) + "\n")
    print(f"\nwrote {OUT}/results.json and {OUT}/results.txt")


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
