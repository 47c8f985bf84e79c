"""Case 7: least_request vs nginx least_conn vs HAProxy leastconn: backend a sleeps 200 ms, b and c
answer at once; 8 concurrent clients (keep-alive off: one connection per request) for 5 s."""
import os, sys, time, threading, collections
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import *

BP = [28001, 28002, 28003]
bk = [Backend(n, p, "slow" if n == "a" else "ok").start() for n, p in zip("abc", BP)]
HA = """frontend f
    bind 127.0.0.1:{port}
    default_backend b
backend b
    balance leastconn
""" + "".join("    server %s 127.0.0.1:%d\n" % (n, p) for n, p in zip("abc", BP))

def load(port, secs=5, clients=8):
    cnt = collections.Counter(); lock = threading.Lock(); stop_at = time.time() + secs
    def w():
        while time.time() < stop_at:
            r = req(port, "/", timeout=5)
            with lock:
                cnt[r["backend"] if r["status"] == 200 else str(r["status"])] += 1
    ts = [threading.Thread(target=w) for _ in range(clients)]
    [t.start() for t in ts]; [t.join() for t in ts]
    return cnt

for name, port, start in [
        ("nginx least_conn", 28010, lambda: nginx(28010, ["least_conn;"] + ["server 127.0.0.1:%d;" % p for p in BP])),
        ("gateway least_request", 28011, lambda: gateway(28011, [(p, None) for p in BP], "least_request")),
        ("haproxy leastconn", 28012, lambda: haproxy(28012, HA)),
        ("nginx round robin (reference)", 28010, lambda: nginx(28010, ["server 127.0.0.1:%d;" % p for p in BP])),
        ("gateway round_robin (reference)", 28011, lambda: gateway(28011, [(p, None) for p in BP], "round_robin"))]:
    p = start()
    c = load(port)
    stop(p)
    tot = sum(c.values())
    log("%-32s total %5d  %s" % (name, tot, "  ".join("%s=%d (%.1f%%)" % (k, v, 100.0 * v / tot) for k, v in sorted(c.items()))))
