"""Shared harness for the load-balancing semantics probe (tower-lb gateway vs nginx / HAProxy).

Backends run in-process (threads); proxies are child processes, stopped by PID.
Everything listens on 127.0.0.1.
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GW = os.environ.get("GATEWAY", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "target", "release", "examples", "gateway"))
WORK = os.environ.get("LB_DIFF_WORK", "/tmp/tower-lb-lb-diff/work")
os.makedirs(WORK, exist_ok=True)
PROCS = []  # (name, Popen)
LOG = []


def log(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    LOG.append(s)


# ---------------------------------------------------------------- backends
RECORDS = []
RLOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def setup(self):
        super().setup()
        self.server.conns.add(self.connection)
        with RLOCK:
            self.server.accepts += 1

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.conns.discard(self.connection)

    def _any(self):
        srv = self.server
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        rec = dict(backend=srv.name, method=self.command, path=self.path, t=time.time(),
                   req=self.headers.get("x-req"), user=self.headers.get("x-user"),
                   headers=[(k, v) for k, v in self.headers.items()], body_len=len(body))
        with RLOCK:
            RECORDS.append(rec)
        mode = srv.mode
        if mode == "hang":
            time.sleep(srv.hang_for)
            self.close_connection = True
            return
        if mode == "slow":
            time.sleep(srv.slow)
        status = 200
        if mode == "502" or self.path.startswith("/bad"):
            status = 502
        if mode == "503":
            status = 503
        out = json.dumps(dict(backend=srv.name, headers=rec["headers"], path=self.path)).encode()
        self.send_response(status)
        self.send_header("X-Backend", srv.name)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _any


class Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass


class Backend:
    def __init__(self, name, port, mode="ok"):
        self.name, self.port, self.mode = name, port, mode
        self.srv = None
        self.hang_for = 6
        self.slow = 0.2

    def start(self):
        for _ in range(100):
            try:
                srv = Server(("127.0.0.1", self.port), Handler)
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("cannot bind %d" % self.port)
        srv.daemon_threads = True
        srv.name, srv.mode, srv.hang_for, srv.slow = self.name, self.mode, self.hang_for, self.slow
        srv.conns = set()
        srv.accepts = 0
        self.srv = srv
        threading.Thread(target=srv.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True).start()
        return self

    def set_mode(self, mode):
        self.mode = mode
        if self.srv:
            self.srv.mode = mode

    @property
    def accepts(self):
        return self.srv.accepts if self.srv else 0

    def stop(self):
        """As a crashed process: listener closed, every connection reset."""
        if not self.srv:
            return
        srv, self.srv = self.srv, None
        srv.shutdown()
        srv.server_close()
        for c in list(srv.conns):
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass


def records(clear=False):
    with RLOCK:
        r = list(RECORDS)
        if clear:
            RECORDS.clear()
    return r


def clear():
    with RLOCK:
        RECORDS.clear()


# ---------------------------------------------------------------- proxies
def _spawn(name, argv, port, **kw):
    out = open(os.path.join(WORK, name + ".out"), "ab")
    p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kw)
    PROCS.append((name, p))
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return p
        except OSError:
            if p.poll() is not None:
                raise RuntimeError("%s exited: see %s" % (name, out.name))
            time.sleep(0.05)
    raise RuntimeError("%s not listening" % name)


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(3)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(3)
    for i, (n, q) in enumerate(PROCS):
        if q is p:
            PROCS.pop(i)
            break


def stop_all():
    for _, p in list(PROCS):
        stop(p)


import atexit  # noqa: E402

atexit.register(stop_all)


def gateway(port, backends, strategy="round_robin", extra=(), name="gw"):
    """backends: list of (port, weight|None)."""
    argv = [GW, "--listen", "127.0.0.1:%d" % port, "--strategy", strategy]
    for bp, w in backends:
        argv += ["--backend", "http://127.0.0.1:%d%s" % (bp, "" if w is None else "=%d" % w)]
    argv += list(extra)
    return _spawn(name, argv, port)


NGINX_TMPL = """daemon off;
master_process off;
worker_processes 1;
pid {work}/{name}.pid;
error_log {work}/{name}.error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {work}/{name}.access.log;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    upstream app {{
        {upstream}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries {tries};
            proxy_next_upstream_timeout 10s;
            proxy_connect_timeout 2s;
            proxy_read_timeout {read_timeout};
            {extra}
        }}
    }}
}}
"""


def nginx(port, upstream_lines, tries=3, read_timeout="30s", extra="", name="nginx"):
    conf = NGINX_TMPL.format(work=WORK, name=name, port=port, upstream="\n        ".join(upstream_lines),
                             tries=tries, read_timeout=read_timeout, extra=extra)
    path = os.path.join(WORK, name + ".conf")
    open(path, "w").write(conf)
    for f in (name + ".error.log",):
        try:
            os.remove(os.path.join(WORK, f))
        except OSError:
            pass
    return _spawn(name, ["nginx", "-c", path, "-p", WORK + "/"], port)


def haproxy_retrying_round_robin(ports):
    """HAProxy's nearest to the gateway's retries, as a `haproxy()` body: round robin over
    `ports`, two retries on another server (redispatch) after a failed connect, an empty
    response, a response timeout or a 502/503/504."""
    return """frontend f
    bind 127.0.0.1:{port}
    default_backend b
backend b
    balance roundrobin
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response response-timeout 502 503 504
""" + "".join("    server s%d 127.0.0.1:%d\n" % (i, p) for i, p in enumerate(ports))


def haproxy(port, conf_body, name="haproxy"):
    conf = """global
    maxconn 256
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 30s
""" + conf_body.replace("{port}", str(port))
    path = os.path.join(WORK, name + ".cfg")
    open(path, "w").write(conf)
    return _spawn(name, ["haproxy", "-db", "-f", path], port)


# ---------------------------------------------------------------- client
def req(port, path="/", method="GET", headers=None, body=None, timeout=5, n=None):
    h = dict(headers or {})
    if n is not None:
        h["X-Req"] = str(n)
    t0 = time.time()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        return dict(status=r.status, backend=r.getheader("X-Backend") or "-", body=data,
                    headers=r.getheaders(), dt=time.time() - t0)
    except Exception as e:  # noqa: BLE001
        return dict(status="ERR:%s" % type(e).__name__, backend="-", body=b"", headers=[], dt=time.time() - t0)
    finally:
        c.close()


def seq_str(rs):
    return " ".join(r["backend"] if r["status"] == 200 else "%s" % r["status"] for r in rs)


class Strace:
    """Counts connect() calls to given ports made by process pid (all threads)."""

    def __init__(self, pid, name):
        self.path = os.path.join(WORK, "strace-%s.txt" % name)
        self.p = subprocess.Popen(["strace", "-f", "-tt", "-e", "trace=connect", "-p", str(pid), "-o", self.path],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        PROCS.append(("strace-" + name, self.p))
        time.sleep(0.5)

    def stop(self):
        stop(self.p)

    def connects(self, port):
        out = []
        for line in open(self.path):
            if "sin_port=htons(%d)" % port in line and "connect(" in line:
                out.append(line.strip())
        return out


def blackhole(port):
    """A port whose SYNs are dropped (accept queue full): connects to it time out."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(0)
    fill = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fill.append(c)
    time.sleep(0.2)
    return ls, fill
