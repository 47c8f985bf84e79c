"""Raw-socket recording backend for the differential probe.

Runs in-process (threads). Every request it parses is appended to RECORDS
as a dict: port, conn id, raw head bytes, raw body bytes (as on the wire),
decoded body, path. Behaviour is selected by the request path.
"""
import gzip
import hashlib
import socket
import threading
import time

RECORDS = []
LOCK = threading.Lock()
BIG = bytes((i * 7 + (i >> 10)) & 0xFF for i in range(1 << 20))
BIG_SHA = hashlib.sha256(BIG).hexdigest()
_conn_counter = [0]
LISTENERS = []


def clear():
    with LOCK:
        RECORDS.clear()


def snapshot():
    with LOCK:
        return list(RECORDS)


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.sock.settimeout(5)

    def fill(self):
        d = self.sock.recv(65536)
        if not d:
            raise EOFError
        self.buf += d

    def read_until(self, sep, limit=1 << 22):
        while sep not in self.buf:
            if len(self.buf) > limit:
                raise ValueError("too long")
            self.fill()
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_n(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def parse_head(head):
    lines = head.split(b"\r\n")
    reqline = lines[0].decode("latin1")
    hdrs = []
    for l in lines[1:]:
        if not l:
            continue
        if b":" in l:
            k, v = l.split(b":", 1)
            hdrs.append((k.decode("latin1").strip().lower(), v.decode("latin1").strip()))
        else:
            hdrs.append(("<malformed>", l.decode("latin1")))
    return reqline, hdrs


def hget(hdrs, name):
    return [v for k, v in hdrs if k == name]


def read_body(c, hdrs):
    te = ",".join(hget(hdrs, "transfer-encoding")).lower()
    if te:
        if "chunked" not in te:
            return b"", b""
        raw = b""
        body = b""
        while True:
            line = c.read_until(b"\n")
            raw += line
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                # trailers
                while True:
                    t = c.read_until(b"\n")
                    raw += t
                    if t in (b"\r\n", b"\n"):
                        break
                break
            data = c.read_n(size)
            raw += data
            body += data
            raw += c.read_until(b"\n")
        return raw, body
    cl = hget(hdrs, "content-length")
    if cl:
        n = int(cl[0].split(",")[0])
        d = c.read_n(n)
        return d, d
    return b"", b""


def send(sock, data):
    try:
        sock.sendall(data)
    except OSError:
        pass


def resp(status, headers, body=b"", reason=None):
    reason = reason or {200: "OK", 204: "No Content", 304: "Not Modified", 502: "Bad Gateway",
                        101: "Switching Protocols", 100: "Continue"}.get(status, "X")
    h = "HTTP/1.1 %d %s\r\n" % (status, reason)
    for k, v in headers:
        h += "%s: %s\r\n" % (k, v)
    return h.encode("latin1") + b"\r\n" + body


def handle(sock, port):
    with LOCK:
        _conn_counter[0] += 1
        cid = _conn_counter[0]
    c = Conn(sock)
    try:
        while True:
            try:
                head = c.read_until(b"\r\n\r\n")
            except (EOFError, socket.timeout, OSError, ValueError):
                return
            reqline, hdrs = parse_head(head)
            parts = reqline.split(" ")
            method = parts[0]
            path = parts[1] if len(parts) > 1 else ""
            p = path.split("?")[0]
            if p.startswith("http://"):
                p = "/" + p.split("/", 3)[-1] if p.count("/") >= 3 else "/"
            expect = [v.lower() for v in hget(hdrs, "expect")]
            if "100-continue" in expect or p == "/100":
                send(sock, b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                raw_body, body = read_body(c, hdrs)
            except (EOFError, socket.timeout, OSError, ValueError) as e:
                raw_body, body = b"<body read failed: %r>" % e, b""
            rec = dict(port=port, conn=cid, t=time.time(), head=head, raw_body=raw_body,
                       body=body, method=method, path=path, reqline=reqline, hdrs=hdrs)
            with LOCK:
                RECORDS.append(rec)
            conn_hdr = ",".join(hget(hdrs, "connection")).lower()
            close_after = "close" in conn_hdr or reqline.endswith("HTTP/1.0") and "keep-alive" not in conn_hdr
            xb = ("X-Backend", str(port))
            ch = [("Connection", "close")] if close_after else []
            if p.startswith("/echo") or p in ("/", "/probe") or p == "*" or p == "/100" or method == "CONNECT":
                out = head + raw_body
                send(sock, resp(200, [xb, ("Content-Length", len(out)), ("Content-Type", "application/octet-stream")] + ch,
                                b"" if method == "HEAD" else out))
            elif p == "/chunked":
                h = resp(200, [xb, ("Transfer-Encoding", "chunked"), ("Trailer", "X-Checksum")] + ch)
                b = b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc123\r\n\r\n"
                send(sock, h + (b"" if method == "HEAD" else b))
            elif p == "/head-test":
                send(sock, resp(200, [xb, ("Content-Length", 1234)] + ch, b"" if method == "HEAD" else b"x" * 1234))
            elif p == "/204":
                send(sock, resp(204, [xb] + ch))
            elif p == "/304":
                send(sock, resp(304, [xb, ("ETag", '"v1"')] + ch))
            elif p == "/close":
                send(sock, resp(200, [xb, ("Content-Length", 5), ("Connection", "close")], b"close"))
                return
            elif p == "/ka-close":
                # Looks keep-alive, but the backend closes right after.
                send(sock, resp(200, [xb, ("Content-Length", 8)], b"ka-close"))
                time.sleep(0.05)
                return
            elif p == "/slow":
                time.sleep(2)
                send(sock, resp(200, [xb, ("Content-Length", 4)] + ch, b"slow"))
            elif p.startswith("/101"):
                send(sock, resp(101, [xb, ("Upgrade", "websocket"), ("Connection", "Upgrade")]))
                sock.settimeout(3)
                rest = c.buf
                c.buf = b""
                if rest:
                    send(sock, b"ECHO:" + rest)
                try:
                    while True:
                        d = sock.recv(65536)
                        if not d:
                            break
                        with LOCK:
                            rec["tunnel"] = rec.get("tunnel", b"") + d
                        send(sock, b"ECHO:" + d)
                except OSError:
                    pass
                return
            elif p == "/big":
                send(sock, resp(200, [xb, ("Content-Length", len(BIG))] + ch, b"" if method == "HEAD" else BIG))
            elif p == "/hop":
                send(sock, resp(200, [xb, ("Connection", "x-foo, keep-alive"), ("X-Foo", "secret-hop"),
                                       ("Keep-Alive", "timeout=5"), ("Proxy-Connection", "keep-alive"),
                                       ("Upgrade", "h2c"), ("Proxy-Authenticate", "Basic"),
                                       ("X-End", "end-to-end"), ("Content-Length", 3)], b"hop"))
            elif p == "/502":
                send(sock, resp(502, [xb, ("Content-Length", 3)] + ch, b"bad"))
            elif p == "/503":
                send(sock, resp(503, [xb, ("Content-Length", 3)] + ch, b"una"))
            elif p == "/dup-cl":
                send(sock, resp(200, [xb, ("Content-Length", 5), ("Content-Length", 7)], b"abcdefg"))
                return
            elif p == "/dup-cl-same":
                send(sock, resp(200, [xb, ("Content-Length", 5), ("Content-Length", 5)] + ch, b"abcde"))
            elif p == "/te-cl-small":
                # CL smaller than the chunked body; the chunk holds something shaped like a response.
                inner = b"hello" + b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nSPOOFED"
                send(sock, resp(200, [xb, ("Content-Length", 5), ("Transfer-Encoding", "chunked")] + ch,
                                b"%x\r\n" % len(inner) + inner + b"\r\n0\r\n\r\n"))
            elif p == "/te-cl":
                send(sock, resp(200, [xb, ("Content-Length", 100), ("Transfer-Encoding", "chunked")] + ch,
                                b"5\r\nhello\r\n0\r\n\r\n"))
            elif p == "/no-len":
                send(sock, resp(200, [xb, ("Connection", "close")], b"close-delimited-body" * 50))
                return
            elif p == "/overlong":
                # Body longer than Content-Length: the extra bytes look like a second response.
                send(sock, resp(200, [xb, ("Content-Length", 5)] + ch,
                                b"hello" + b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nX-Spoof: 1\r\n\r\nSPOOFED"))
            elif p == "/short":
                send(sock, resp(200, [xb, ("Content-Length", 100)], b"only-ten!!"))
                time.sleep(0.1)
                return
            elif p == "/chunk-trunc":
                send(sock, resp(200, [xb, ("Transfer-Encoding", "chunked")], b"5\r\nhello\r\n"))
                time.sleep(0.1)
                return
            elif p == "/resp-fold":
                send(sock, b"HTTP/1.1 200 OK\r\nX-Backend: %d\r\nX-Fold: a\r\n b\r\nContent-Length: 2\r\n\r\nok" % port)
            elif p == "/resp-space":
                send(sock, b"HTTP/1.1 200 OK\r\nX-Backend: %d\r\nContent-Length : 2\r\n\r\nok" % port)
            elif p == "/103":
                send(sock, b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n" +
                     resp(200, [xb, ("Content-Length", 2)] + ch, b"ok"))
            elif p == "/setcookie2":
                send(sock, resp(200, [xb, ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Content-Length", 2)] + ch, b"ok"))
            elif p == "/gzip-te":
                # Response with a transfer coding other than chunked.
                z = gzip.compress(b"hello gzip te")
                chunk = b"%x\r\n" % len(z) + z + b"\r\n0\r\n\r\n"
                send(sock, resp(200, [xb, ("Transfer-Encoding", "gzip, chunked")] + ch, chunk))
            else:
                send(sock, resp(200, [xb, ("Content-Length", 2)] + ch, b"ok"))
            if close_after:
                return
    finally:
        try:
            sock.close()
        except OSError:
            pass


def serve(port):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(256)
    LISTENERS.append(ls)

    def loop():
        while True:
            try:
                s, _ = ls.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(s, port), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
