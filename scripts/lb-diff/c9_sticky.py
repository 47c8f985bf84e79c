"""Case 9: gateway --sticky (round robin) vs HAProxy `cookie lb insert indirect nocache` + redispatch."""
import os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import *

N = "abc"; BP = [28001, 28002, 28003]
bk = {n: Backend(n, p).start() for n, p in zip(N, BP)}
HA = """frontend f
    bind 127.0.0.1:{port}
    default_backend b
backend b
    balance roundrobin
    cookie lb insert indirect nocache
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response response-timeout 502 503 504
""" + "".join("    server %s 127.0.0.1:%d cookie %s\n" % (n, p, n) for n, p in zip(N, BP))

def sc(r):
    return [v for k, v in r["headers"] if k.lower() == "set-cookie"]

def cookie_of(r):
    s = sc(r)
    return s[0].split(";")[0] if s else None

def upstream_cookie(r):
    import json
    try:
        h = json.loads(r["body"])["headers"]
        return [v for k, v in h if k.lower() == "cookie"]
    except Exception:
        return "?"

def line(r):
    return "%s %s set-cookie=%s upstream-cookie=%s" % (r["status"], r["backend"], sc(r), upstream_cookie(r))

for name, port, start in [("gateway", 28011, lambda: gateway(28011, [(p, None) for p in BP], "round_robin", ["--sticky"])),
                          ("haproxy", 28012, lambda: haproxy(28012, HA))]:
    log("\n--- %s" % name)
    p = start()
    r0 = req(port, "/", headers={"Cookie": "session=xyz"})
    log("first (client has another cookie session=xyz): " + line(r0))
    ck = cookie_of(r0); home = r0["backend"]
    rs = [req(port, "/", headers={"Cookie": ck + "; session=xyz"}) for _ in range(6)]
    log("6 more with %s: backends %s; set-cookie on them: %s" % (ck[:40], seq_str(rs), [sc(r) for r in rs]))
    log("upstream saw Cookie: %s" % upstream_cookie(rs[0]))
    for label, val in [("garbled lb=garbage", "lb=garbage"), ("empty lb=", "lb="),
                       ("tampered (last char flipped)", ck[:-1] + ("A" if ck[-1] != "A" else "B")),
                       ("truncated", ck[:len(ck) // 2]),
                       ("HAProxy-style lb=a (a backend name)", "lb=a"),
                       ("HAProxy-style lb=c (a backend name)", "lb=c"),
                       ("very long lb=x*4000", "lb=" + "x" * 4000)]:
        rr = [req(port, "/", headers={"Cookie": val}) for _ in range(3)]
        log("%-36s -> %s" % (label, " | ".join("%s %s sc=%s" % (r["status"], r["backend"], [s[:50] for s in sc(r)]) for r in rr)))
    # two lb cookies, first garbage, second valid
    r = req(port, "/", headers={"Cookie": "lb=garbage; " + ck})
    log("two lb cookies (garbage first, valid second) -> %s %s (home %s) sc=%s" % (r["status"], r["backend"], home, [s[:50] for s in sc(r)]))
    r = req(port, "/", headers={"Cookie": ck + "; lb=garbage"})
    log("two lb cookies (valid first, garbage second) -> %s %s (home %s) sc=%s" % (r["status"], r["backend"], home, [s[:50] for s in sc(r)]))
    # home dies
    bk[home].stop()
    rr = [req(port, "/", headers={"Cookie": ck}) for _ in range(3)]
    log("home %s stopped, 3 requests with its cookie: %s" % (home, " | ".join(line(r) for r in rr)))
    nck = cookie_of(rr[0])
    if nck:
        rr2 = [req(port, "/", headers={"Cookie": nck}) for _ in range(3)]
        log("with the re-issued cookie: %s; set-cookie: %s" % (seq_str(rr2), [sc(r) for r in rr2]))
    bk[home].start()
    time.sleep(0.2)
    rr = [req(port, "/", headers={"Cookie": ck}) for _ in range(3)]
    log("home %s restarted (within fail_timeout), old cookie: %s" % (home, " | ".join("%s %s sc=%s" % (r["status"], r["backend"], [s[:50] for s in sc(r)]) for r in rr)))
    # home broken (502) instead of dead
    bk[home].set_mode("502")
    rr = [req(port, "/", headers={"Cookie": ck}) for _ in range(2)]
    rp = req(port, "/", method="POST", body=b"x", headers={"Cookie": ck})
    log("home %s answers 502: GET x2 %s | POST %s" % (home, " | ".join("%s %s sc=%s" % (r["status"], r["backend"], [s[:50] for s in sc(r)]) for r in rr),
                                                   "%s %s" % (rp["status"], rp["backend"])))
    bk[home].set_mode("ok")
    stop(p)
    time.sleep(0.3)
