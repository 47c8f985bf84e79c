"""Several raw requests, each on a new client connection, through one proxy (one backend with
SINGLE_BACKEND=1): shows whether one response leaves the pooled backend connection dirty.
python3 exp_seq.py PROXY 'bytes-literal' 'bytes-literal' ..."""
import sys, time, os, ast
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run, backend
from client import exchange
def main():
    proxy = sys.argv[1]
    os.makedirs(run.WORK, exist_ok=True)
    backend.serve(run.B1); backend.serve(run.B2)
    run.start(proxy)
    try:
        for i, a in enumerate(sys.argv[2:]):
            backend.clear()
            got, closed, err, _ = exchange(run.PORTS[proxy], [ast.literal_eval(a)], idle=1.0, methods=["GET"])
            time.sleep(0.2)
            print(f"--- req {i}: closed={closed}\n  {got[:400]!r}")
            for r in backend.snapshot():
                print("  backend", r["port"], "conn", r["conn"], repr(r["reqline"]))
    finally:
        run.stop(proxy)
try: main()
finally: run.stop_all()
