"""Raw HTTP/1.1 client and response-stream parser for the probe."""
import socket
import time


def _done(data, methods):
    if not methods:
        return False
    try:
        rs = [r for r in parse_responses(data, methods) if r.get("framing") != "interim"]
    except Exception:
        return False
    return len(rs) >= len(methods) and all(r.get("complete") and r.get("framing") not in ("close",) and r.get("status") != 101 for r in rs)


def exchange(port, parts, idle=1.0, total=6.0, wait_100=False, after=None, methods=()):
    """Send `parts` (list of bytes; a float means sleep) to 127.0.0.1:port, read until
    the peer closes, `idle` seconds pass with no data, or `total` seconds pass.
    Returns (raw_bytes, closed_by_peer, error)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    s.settimeout(0.2)
    got = b""
    closed = False
    err = None
    try:
        for p in parts:
            if isinstance(p, float):
                end = time.time() + p
                while time.time() < end:
                    try:
                        d = s.recv(65536)
                        if not d:
                            closed = True
                            break
                        got += d
                        if wait_100 and b"100 Continue" in got:
                            break
                    except socket.timeout:
                        pass
                if closed:
                    break
                continue
            try:
                s.sendall(p)
            except OSError as e:
                err = "send: %r" % e
                break
        start = time.time()
        last = time.time()
        while not closed and time.time() - start < total and time.time() - last < idle:
            try:
                d = s.recv(65536)
                if not d:
                    closed = True
                    break
                got += d
                last = time.time()
                if _done(got, methods):
                    break
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed = True
                err = "reset"
                break
        probe = None
        if not closed and after is not None:
            # A follow-up request on the same connection: is it still usable, and in sync?
            try:
                s.sendall(after)
                pg = b""
                start = time.time()
                last = time.time()
                while time.time() - start < total and time.time() - last < idle:
                    try:
                        d = s.recv(65536)
                        if not d:
                            break
                        pg += d
                        last = time.time()
                        if _done(pg, ["GET"]):
                            break
                    except socket.timeout:
                        pass
                    except ConnectionResetError:
                        break
                probe = pg
            except OSError as e:
                probe = b"<send failed %r>" % e
    finally:
        s.close()
    return got, closed, err, probe


def parse_responses(data, methods=()):
    """Split a response byte stream into responses. methods: request methods in order
    (for HEAD). Returns list of dicts (status, reason, headers, body, framing, complete)."""
    out = []
    i = 0
    mi = 0
    while i < len(data):
        end = data.find(b"\r\n\r\n", i)
        if end < 0:
            out.append(dict(status=None, garbage=data[i:i + 200], complete=False))
            break
        head = data[i:end].decode("latin1")
        lines = head.split("\r\n")
        sl = lines[0].split(" ", 2)
        try:
            status = int(sl[1])
        except (IndexError, ValueError):
            out.append(dict(status=None, garbage=data[i:i + 200], complete=False))
            break
        hdrs = []
        for l in lines[1:]:
            if ":" in l:
                k, v = l.split(":", 1)
                hdrs.append((k.strip().lower(), v.strip()))
        i = end + 4
        r = dict(status=status, version=sl[0], reason=sl[2] if len(sl) > 2 else "", headers=hdrs,
                 head=head, complete=True)
        if 100 <= status < 200 and status != 101:
            r["body"] = b""
            r["framing"] = "interim"
            out.append(r)
            continue
        method = methods[mi] if mi < len(methods) else "GET"
        mi += 1
        te = ",".join(v for k, v in hdrs if k == "transfer-encoding").lower()
        cl = [v for k, v in hdrs if k == "content-length"]
        if method == "HEAD" or status in (204, 304) or status == 101:
            r["body"] = b""
            r["framing"] = "none"
            if status == 101:
                r["tunnel"] = data[i:]
                i = len(data)
        elif "chunked" in te:
            body = b""
            trailers = []
            r["framing"] = "chunked"
            ok = False
            while True:
                nl = data.find(b"\r\n", i)
                if nl < 0:
                    break
                try:
                    size = int(data[i:nl].split(b";")[0], 16)
                except ValueError:
                    break
                i = nl + 2
                if size == 0:
                    while True:
                        nl = data.find(b"\r\n", i)
                        if nl < 0:
                            break
                        line = data[i:nl]
                        i = nl + 2
                        if not line:
                            ok = True
                            break
                        trailers.append(line.decode("latin1"))
                    break
                body += data[i:i + size]
                i += size + 2
            r["body"] = body
            r["trailers"] = trailers
            r["complete"] = ok
        elif cl:
            n = int(cl[0].split(",")[0])
            r["body"] = data[i:i + n]
            r["framing"] = "content-length"
            r["complete"] = len(r["body"]) == n
            i += n
        else:
            r["body"] = data[i:]
            r["framing"] = "close"
            i = len(data)
        out.append(r)
    return out
