#!/bin/sh
# Re-run every comparison (about 6 minutes). Outputs: $LB_DIFF_OUT/out_*.txt (default
# /tmp/tower-lb-lb-diff); configs and logs: $LB_DIFF_WORK. GATEWAY=/path/to/gateway overrides
# target/release/examples/gateway. Ports 28001-28012 on 127.0.0.1.
cd "$(dirname "$0")" || exit 1
OUT=${LB_DIFF_OUT:-/tmp/tower-lb-lb-diff}
mkdir -p "$OUT"
for s in c1_wrr c2_dead c3_broken c6_alldead c6b_outage c7_leastconn c8_chash c9_sticky c9b_cache c10_xff c11_counting; do
  echo "== $s"; timeout 300 python3 $s.py > "$OUT/out_${s%%_*}.txt" 2>&1; cat "$OUT/out_${s%%_*}.txt"
done
