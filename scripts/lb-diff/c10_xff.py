"""Case 10: X-Forwarded-* / Forwarded / Host sent upstream when the client already sent a chain.
nginx: (A) its default (Host $proxy_host, no XFF), (B) the migration doc's recipe
($proxy_add_x_forwarded_for), (C) the http-diff reference config (Host $http_host, XFF $remote_addr);
HAProxy `option forwardfor`; the gateway's defaults."""
import os, sys, json
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import *

BP = [28001]
Backend("a", 28001).start()
H = {"Host": "example.com", "X-Forwarded-For": "1.2.3.4, 10.0.0.1", "X-Forwarded-Host": "evil.example",
     "X-Forwarded-Proto": "https", "Forwarded": "for=1.2.3.4;proto=https", "X-Real-IP": "9.9.9.9"}
KEEP = ("host", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "forwarded", "x-real-ip", "via")
ups = ["server 127.0.0.1:28001;", "server 127.0.0.1:28001 down;"]  # two entries: no "single" shortcut
for name, port, start in [
        ("nginx default", 28010, lambda: nginx(28010, ups)),
        ("nginx doc recipe", 28010, lambda: nginx(28010, ups, extra="proxy_set_header Host $proxy_host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;")),
        ("nginx http-diff ref", 28010, lambda: nginx(28010, ups, extra="proxy_set_header Host $http_host; proxy_set_header X-Forwarded-For $remote_addr; proxy_set_header X-Forwarded-Host $host; proxy_set_header X-Forwarded-Proto $scheme;")),
        ("haproxy forwardfor", 28012, lambda: haproxy(28012, "frontend f\n    bind 127.0.0.1:{port}\n    option forwardfor\n    default_backend b\nbackend b\n    server a 127.0.0.1:28001\n")),
        ("gateway", 28011, lambda: gateway(28011, [(28001, None)], "round_robin"))]:
    p = start()
    r = req(port, "/xff", headers=H)
    stop(p)
    try:
        hs = json.loads(r["body"])["headers"]
    except Exception:
        hs = [("status", r["status"])]
    log("%-20s %s" % (name, [(k.lower(), v) for k, v in hs if k.lower() in KEEP]))
