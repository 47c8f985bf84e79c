"""One request to a path whose answer is 503 (an application status), then ordinary GETs:
are all backends ejected? Gateway vs nginx (reference config, and with
proxy_next_upstream error timeout http_502 http_503 http_504, the gateway's retry set).
python3 scripts/http-diff/exp_health.py"""
import sys, time, os
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run, backend
from client import exchange, parse_responses
REQS = [b"GET /503 HTTP/1.1\r\nHost: x\r\n\r\n"] + [b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"] * 4
def go(proxy, label):
    run.start(proxy)
    try:
        out = []
        for r in REQS:
            backend.clear()
            got, *_ = exchange(run.PORTS[proxy], [r], methods=["GET"])
            time.sleep(0.1)
            rs = parse_responses(got, ["GET"])
            out.append((rs[0]["status"] if rs else None, len(backend.snapshot())))
        print(f"{label:45s} (status, backend requests): {out}")
    finally:
        run.stop(proxy)
def main():
    os.makedirs(run.WORK, exist_ok=True)
    backend.serve(run.B1); backend.serve(run.B2)
    go("gateway", "gateway (defaults)")
    go("nginx", "nginx reference config")
    orig = run.nginx_conf
    run.nginx_conf = lambda: orig().replace("proxy_http_version 1.1;", "proxy_http_version 1.1; proxy_next_upstream error timeout http_502 http_503 http_504;")
    go("nginx", "nginx + proxy_next_upstream http_50x")
try: main()
finally: run.stop_all()
