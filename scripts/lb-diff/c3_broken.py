"""Cases 3, 4, 5: the FIRST listed backend of 3 (round robin) is broken:
  502  - answers 502 to everything            (case 3)
  hang - accepts, reads the request, never answers (3 s, then closes)   (case 4; 1 s response timeout)
  dead - port closed (connection refused)      (case 5)
For each method a fresh proxy (so health state starts clean), 3 sequential requests.
Per request: status to client, answering backend, backends that saw the request (attempts), latency."""
import os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import *

BP = [28001, 28002, 28003]
bk = [Backend("x", BP[0]), Backend("b", BP[1]).start(), Backend("c", BP[2]).start()]
bk[0].hang_for = 3
HA = haproxy_retrying_round_robin(BP)

def proxies(mode):
    rt = "1s" if mode == "hang" else "30s"
    ha = HA.replace("backend b\n", "backend b\n    timeout server %s\n" % rt)
    return [
        ("nginx", 28010, lambda: nginx(28010, ["server 127.0.0.1:%d;" % p for p in BP], read_timeout=rt)),
        ("gateway", 28011, lambda: gateway(28011, [(p, None) for p in BP], "round_robin",
                                            ["--response-timeout", rt])),
        ("haproxy", 28012, lambda: haproxy(28012, ha)),
    ]

only = sys.argv[1:] or ["502", "hang", "dead"]
for mode in only:
    log("\n=== first backend x: %s ===" % mode)
    if mode == "dead":
        bk[0].stop()
    else:
        bk[0].set_mode(mode); bk[0].start()
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH"]:
        for name, port, start in proxies(mode):
            p = start()
            clear()
            out = []
            for i in range(3):
                rid = "%s-%s-%d" % (name, method, i)
                r = req(port, "/m", method=method, n=rid, body=b"x=1" if method in ("POST", "PUT", "PATCH") else None,
                        headers={"Content-Type": "application/x-www-form-urlencoded"} if method in ("POST", "PUT", "PATCH") else None)
                time.sleep(0.05)
                seen = [x["backend"] for x in records() if x["req"] == rid]
                out.append("%s(%s via %s, %.2fs)" % (r["status"], r["backend"], "+".join(seen) or "-", r["dt"]))
            stop(p)
            log("%-7s %-8s %s" % (method, name, "  ".join(out)))
    bk[0].stop()
