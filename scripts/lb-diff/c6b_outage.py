"""Case 6b: what follows a full outage.
 (a) recovery: all 3 dead, one GET; backend b comes back at t=1 s; a GET every 0.5 s until t=12 s.
 (b) blackholed: all 3 backends drop SYNs (connect timeout 2 s); 3 sequential GETs: status, latency.
 (c) poison page: every backend answers 502 for /bad only; one GET /bad then GET / every 0.5 s for 3 s."""
import os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import *

BP = [28001, 28002, 28003]
def P():
    return [("nginx", 28010, lambda: nginx(28010, ["server 127.0.0.1:%d;" % p for p in BP])),
            ("gateway", 28011, lambda: gateway(28011, [(p, None) for p in BP], "round_robin"))]
part = sys.argv[1:] or ["a", "b", "c"]
if "a" in part:
    log("--- (a) recovery after full outage; b restarts at t=1s")
    for name, port, start in P():
        b = Backend("b", BP[1])
        p = start()
        t0 = time.time()
        out = [req(port, "/")]
        time.sleep(max(0, 1 - (time.time() - t0)))
        b.start()
        while time.time() - t0 < 12:
            r = req(port, "/"); out.append(dict(r, t=time.time() - t0))
            time.sleep(0.5)
        b.stop(); stop(p)
        first_ok = next((r["t"] for r in out[1:] if r["status"] == 200), None)
        log("%-8s first 200 after b is back at t=%s s; statuses: %s" % (name, first_ok and "%.1f" % first_ok,
            " ".join(str(r["status"]) for r in out)))
if "b" in part:
    log("--- (b) every backend blackholed (SYN dropped); connect timeout 2s, tries 3, next_upstream_timeout 10s")
    holes = [blackhole(p) for p in BP]
    for name, port, start in P():
        p = start()
        out = [req(port, "/", timeout=12) for _ in range(3)]
        stop(p)
        log("%-8s %s" % (name, "  ".join("%s %.2fs" % (r["status"], r["dt"]) for r in out)))
    for ls, fill in holes:
        ls.close(); [c.close() for c in fill]
if "c" in part:
    log("--- (c) poison page: /bad is 502 on every backend, / is fine")
    bk = [Backend(n, p).start() for n, p in zip("abc", BP)]
    for name, port, start in P():
        p = start()
        t0 = time.time()
        bad = req(port, "/bad")
        out = []
        while time.time() - t0 < 3:
            out.append(req(port, "/")); time.sleep(0.5)
        stop(p)
        log("%-8s GET /bad -> %s; then GET / : %s" % (name, bad["status"], seq_str(out)))
    for b in bk: b.stop()
