"""Case 11: which 502s count against a backend (passive health, max_fails=1 fail_timeout=10s).
/bad answers 502 on every backend, / answers 200. Per variant a fresh proxy, one request to /bad,
then 6 GET / : does the backend that answered the 502 get traffic?
  (i)   3 backends, tries 1 (no retries): GET /bad
  (ii)  3 backends, tries 3: POST /bad (not retried)
  (iii) 3 backends, tries 2: GET /bad (a and b answer 502; the last one's 502 goes to the client)"""
import os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import *

BP = [28001, 28002, 28003]
bk = [Backend(n, p).start() for n, p in zip("abc", BP)]
for label, tries, method in [("(i) tries 1, GET /bad", 1, "GET"), ("(ii) tries 3, POST /bad", 3, "POST"),
                             ("(iii) tries 2, GET /bad", 2, "GET")]:
    for name, port, start in [
            ("nginx", 28010, lambda: nginx(28010, ["server 127.0.0.1:%d;" % p for p in BP], tries=tries)),
            ("gateway", 28011, lambda: gateway(28011, [(p, None) for p in BP], "round_robin", ["--tries", str(tries)]))]:
        p = start()
        clear()
        r = req(port, "/bad", method=method, body=b"x" if method == "POST" else None, n="bad")
        seen = "+".join(x["backend"] for x in records() if x["req"] == "bad")
        rs = [req(port, "/") for _ in range(6)]
        stop(p)
        log("%-24s %-8s %s /bad -> %s (tried %s); then 6 GET /: %s" % (label, name, method, r["status"], seen, seq_str(rs)))
