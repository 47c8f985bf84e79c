"""Case 8: consistent_hash (x-user) vs nginx `hash $http_x_user consistent` vs HAProxy
`balance hdr(x-user)` + `hash-type consistent`.
200 users x 3 requests: stickiness. Then (i) backend d stopped at run time (dead: refused),
(ii) proxy restarted with d removed from the configuration: fraction of users that moved,
split by users that were on d and users that were not. Also: requests without x-user."""
import os, sys, time, collections
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import *

N = "abcd"; BP = [28001, 28002, 28003, 28004]
bk = {n: Backend(n, p).start() for n, p in zip(N, BP)}
USERS = ["user-%d" % i for i in range(200)]

def ha(ports):
    return """frontend f
    bind 127.0.0.1:{port}
    default_backend b
backend b
    balance hdr(x-user)
    hash-type consistent
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response response-timeout 502 503 504
""" + "".join("    server %s 127.0.0.1:%d\n" % (N[BP.index(p)], p) for p in ports)

def mapping(port, reps=3):
    m, unstable, errs = {}, 0, 0
    for u in USERS:
        seen = set()
        for _ in range(reps):
            r = req(port, "/", headers={"X-User": u})
            if r["status"] != 200: errs += 1
            seen.add(r["backend"])
        if len(seen) > 1: unstable += 1
        m[u] = sorted(seen)[0] if len(seen) == 1 else "+".join(sorted(seen))
    return m, unstable, errs

def moved(m0, m1):
    on_d = [u for u in USERS if m0[u] == "d"]; others = [u for u in USERS if m0[u] != "d"]
    return (sum(1 for u in on_d if m1[u] != m0[u]), len(on_d), sum(1 for u in others if m1[u] != m0[u]), len(others))

mk = {
    "nginx": (28010, lambda ports: nginx(28010, ["hash $http_x_user consistent;"] + ["server 127.0.0.1:%d;" % p for p in ports])),
    "gateway": (28011, lambda ports: gateway(28011, [(p, None) for p in ports], "consistent_hash")),
    "haproxy": (28012, lambda ports: haproxy(28012, ha(ports))),
}
for name, (port, start) in mk.items():
    p = start(BP)
    m0, unst, errs = mapping(port)
    dist = collections.Counter(m0.values())
    nokey = seq_str([req(port, "/") for _ in range(12)])
    bk["d"].stop()
    m1, unst1, errs1 = mapping(port)
    bk["d"].start()
    stop(p)
    p = start(BP[:3])
    m2, unst2, errs2 = mapping(port)
    stop(p)
    a = moved(m0, m1); b = moved(m0, m2)
    log("%-8s 4 backends: users per backend %s; users seeing >1 backend over 3 requests: %d; errors %d" % (name, dict(sorted(dist.items())), unst, errs))
    log("%-8s no x-user header, 12 requests: %s" % (name, nokey))
    log("%-8s d dead at run time: moved %d/%d of d's users, %d/%d of the others; unstable %d; errors %d" % (name, *a, unst1, errs1))
    log("%-8s d removed from config: moved %d/%d of d's users, %d/%d of the others; unstable %d; errors %d" % (name, *b, unst2, errs2))
    # do the two ways of removing d agree (same new home)?
    same = sum(1 for u in USERS if m1[u] == m2[u])
    log("%-8s dead-vs-removed: same backend for %d/200 users" % (name, same))
