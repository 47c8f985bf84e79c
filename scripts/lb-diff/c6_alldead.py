"""Case 6: every backend dead (ports closed). 6 sequential GETs and 2 POSTs; per request: status,
body, latency, and connect() attempts the proxy made (strace)."""
import os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import *

BP = [28001, 28002, 28003]
HA = haproxy_retrying_round_robin(BP)
for name, port, start in [
        ("nginx", 28010, lambda: nginx(28010, ["server 127.0.0.1:%d;" % p for p in BP])),
        ("gateway", 28011, lambda: gateway(28011, [(p, None) for p in BP], "round_robin")),
        ("haproxy", 28012, lambda: haproxy(28012, HA))]:
    p = start()
    st = Strace(p.pid, name)
    marks = []
    for i, m in enumerate(["GET"] * 6 + ["POST"] * 2):
        n0 = sum(len(st.connects(bp)) for bp in BP)
        r = req(port, "/x", method=m, body=b"x=1" if m == "POST" else None)
        time.sleep(0.2)
        n1 = sum(len(st.connects(bp)) for bp in BP)
        body = r["body"][:90].decode("latin1").replace("\r", "").replace("\n", " ")
        ct = dict((k.lower(), v) for k, v in r["headers"]).get("content-type")
        log("%-8s %s #%d: %s %.3fs connects=%d ct=%s body=%r" % (name, m, i, r["status"], r["dt"], n1 - n0, ct, body))
    st.stop(); stop(p)
