"""Case 1: smooth WRR sequences, 5/1/1 and 3/2/1, and across a stop/restart of a backend."""
import os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import *

NAMES = "abcd"
BP = [28001, 28002, 28003]
bks = [Backend(NAMES[i], p).start() for i, p in enumerate(BP)]

def run(weights, strategy, restart_idx):
    log("\n=== weights %s  gateway --strategy %s ===" % (weights, strategy))
    ng = nginx(28010, ["server 127.0.0.1:%d weight=%d;" % (p, w) for p, w in zip(BP, weights)])
    gw = gateway(28011, list(zip(BP, weights)), strategy)
    ha = haproxy(28012, """frontend f
    bind 127.0.0.1:{port}
    default_backend b
backend b
    balance roundrobin
""" + "".join("    server %s 127.0.0.1:%d weight %d\n" % (NAMES[i], p, w) for i, (p, w) in enumerate(zip(BP, weights))))
    procs = dict(nginx=28010, gateway=28011, haproxy=28012)
    for name, port in procs.items():
        rs = [req(port, "/", n=i) for i in range(21)]
        log("%-8s first21: %s" % (name, seq_str(rs)))
    # per proxy alone (timing matters): stop a backend, 7 requests, restart it,
    # 7 requests at once (within fail_timeout), wait 11 s, 14 requests
    b = bks[restart_idx]
    for name, port in [("nginx", 28010), ("gateway", 28011)]:
        out = []
        t0 = time.time()
        b.stop()
        out.append(seq_str([req(port, "/") for i in range(7)]))
        b.start()
        out.append(seq_str([req(port, "/") for i in range(7)]))
        t1 = time.time() - t0
        time.sleep(11)
        out.append(seq_str([req(port, "/") for i in range(14)]))
        log("%-8s %s stopped: %s | restarted (t=%.1fs): %s | +11s: %s" % (name, NAMES[restart_idx], out[0], t1, out[1], out[2]))
    for p in (ng, gw, ha):
        stop(p)

run([5, 1, 1], "weighted_round_robin", 0)
run([3, 2, 1], "weighted_round_robin", 1)
run([3, 2, 1], "round_robin", 0)
