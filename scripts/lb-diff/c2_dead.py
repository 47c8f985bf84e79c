"""Case 2: round robin over 3 backends, one dead (port closed) from the start.
30 sequential requests, then one request every 0.5 s until t=23 s; connect() attempts to the dead
port are counted with strace. Then the dead backend listed first: 9 sequential requests, to see
where the first request's retry goes and where the rotation goes on from there."""
import os, sys, time, datetime
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import *

BP = [28001, 28002, 28003]
a = Backend("a", BP[0]).start(); b = Backend("b", BP[1]).start()  # c (28003) is never started
DEAD = BP[2]

def run(name, port, start):
    p = start()
    st = Strace(p.pid, name)
    t0 = time.time()
    rs = [req(port, "/", n=i) for i in range(30)]
    t30 = time.time() - t0
    later = []
    while time.time() - t0 < 23:
        time.sleep(0.5)
        r = req(port, "/"); r["t"] = time.time() - t0
        later.append(r)
    time.sleep(0.3)
    st.stop(); stop(p)
    cs = st.connects(DEAD)
    def ts(line):
        hh = line.split()[1]
        h, m, s = hh.split(":")
        return float(h) * 3600 + float(m) * 60 + float(s)
    base = datetime.datetime.fromtimestamp(t0)
    base_s = base.hour * 3600 + base.minute * 60 + base.second + base.microsecond / 1e6
    times = ["%.2f" % (ts(l) - base_s) for l in cs]
    fails = sum(1 for r in rs + later if r["status"] != 200)
    log("%-8s 30 requests (%.2fs): %s" % (name, t30, seq_str(rs)))
    log("%-8s failures to client: %d of %d" % (name, fails, len(rs) + len(later)))
    log("%-8s connect() to dead port: %d, at t = %s" % (name, len(cs), " ".join(times)))
    log("%-8s later (every 0.5s): %s" % (name, " ".join("%.1f:%s" % (r["t"], r["backend"] if r["status"] == 200 else r["status"]) for r in later)))
    slow = [r for r in rs + later if r["dt"] > 0.1]
    log("%-8s slow requests (>100ms): %s" % (name, [(round(r["dt"], 3), r["backend"]) for r in slow]))

ups = ["server 127.0.0.1:%d;" % p for p in BP]
run("nginx", 28010, lambda: nginx(28010, ups))
run("gateway", 28011, lambda: gateway(28011, [(p, None) for p in BP], "round_robin"))


def run_first(name, port, start):
    p = start()
    rs = [req(port, "/", n=i) for i in range(9)]
    stop(p)
    log("%-8s dead listed first, 9 requests: %s" % (name, seq_str(rs)))

first = [DEAD, BP[0], BP[1]]
run_first("nginx", 28010, lambda: nginx(28010, ["server 127.0.0.1:%d;" % p for p in first]))
run_first("gateway", 28011, lambda: gateway(28011, [(p, None) for p in first], "round_robin"))
