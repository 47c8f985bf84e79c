"""Can a client eject healthy backends from the gateway (passive health) with a malformed
request body?  python3 scripts/http-diff/exp_eject.py"""
import sys, time, os
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run, backend
from client import exchange, parse_responses

BAD = b"POST /echo HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"
GOOD = b"GET /echo HTTP/1.1\r\nHost: test.local\r\n\r\n"

def main():
    os.makedirs(run.WORK, exist_ok=True)
    backend.serve(run.B1); backend.serve(run.B2)
    for proxy in ["gateway", "nginx"]:
        run.start(proxy)
        try:
            print("==", proxy)
            for label, data in [("bad", BAD), ("bad", BAD), ("good", GOOD), ("good", GOOD), ("good", GOOD)]:
                backend.clear()
                got, closed, err, _ = exchange(run.PORTS[proxy], [data], methods=["GET"])
                time.sleep(0.2)
                rs = parse_responses(got, ["GET"])
                st = rs[0]["status"] if rs else None
                body = rs[0].get("body", b"")[:70] if rs else b""
                print(f"  {label:5s} -> {st} {body!r} backend_saw={[(r['port'], r['reqline']) for r in backend.snapshot()]}")
        finally:
            run.stop(proxy)

if __name__ == "__main__":
    try:
        main()
    finally:
        run.stop_all()
