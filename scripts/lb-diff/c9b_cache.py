"""Case 9b: the response that carries the sticky Set-Cookie: is it marked uncacheable
(HAProxy `nocache` adds Cache-Control: private)? Backend answers with Cache-Control: public, max-age=60."""
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib
from lib import *

orig = lib.Handler.end_headers
def end_headers(self):
    if self.path.startswith("/cacheable"):
        self.send_header("Cache-Control", "public, max-age=60")
    orig(self)
lib.Handler.end_headers = end_headers

BP = [28001, 28002]
bk = [Backend(n, p).start() for n, p in zip("ab", BP)]
HA = """frontend f
    bind 127.0.0.1:{port}
    default_backend b
backend b
    balance roundrobin
    cookie lb insert indirect nocache
""" + "".join("    server %s 127.0.0.1:%d cookie %s\n" % (n, p, n) for n, p in zip("ab", BP))
for name, port, start in [("gateway", 28011, lambda: gateway(28011, [(p, None) for p in BP], "round_robin", ["--sticky"])),
                          ("haproxy", 28012, lambda: haproxy(28012, HA))]:
    p = start()
    for path in ["/cacheable", "/plain"]:
        r = req(port, path)
        hs = [(k, v[:60]) for k, v in r["headers"] if k.lower() in ("set-cookie", "cache-control", "vary", "expires", "pragma")]
        log("%-8s %-11s %s %s" % (name, path, r["status"], hs))
    stop(p)
