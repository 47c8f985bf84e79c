"""Send one raw request through one proxy and dump everything.
python3 scripts/http-diff/exp_single.py PROXY 'RAW-REQUEST-as-python-bytes-literal' [repeat]"""
import sys, time, os, ast
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run, backend
from client import exchange

def main():
    proxy = sys.argv[1]; data = ast.literal_eval(sys.argv[2]); rep = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    os.makedirs(run.WORK, exist_ok=True)
    backend.serve(run.B1); backend.serve(run.B2)
    run.start(proxy)
    try:
        for i in range(rep):
            backend.clear()
            t = time.time()
            got, closed, err, probe = exchange(run.PORTS[proxy], [data], idle=2.0, after=run.PROBE)
            print(f"--- try {i}: {time.time()-t:.2f}s closed={closed} err={err}\n{got[:1500]!r}\nPROBE {probe[:300] if probe else probe!r}")
            time.sleep(0.3)
            for r in backend.snapshot():
                print("  backend", r["port"], r["conn"], repr(r["head"][:200]), repr(r["raw_body"][:100]))
    finally:
        run.stop(proxy)
try:
    main()
finally:
    run.stop_all()
