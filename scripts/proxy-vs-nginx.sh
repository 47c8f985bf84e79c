#!/usr/bin/env bash
# The gateway example against nginx as a reverse proxy, one core each.
#
# Two loopback backends (one nginx worker answering a short text) sit behind
# both proxies: nginx (one worker, upstream `keepalive`, HTTP/1.1 to the
# backends, the same forwarded headers as tower-lb's ProxyDirector) and the
# gateway example (release build, which Cargo.toml links with fat LTO: the
# first build takes a few minutes; round robin, `--backend` flags). wrk runs
# on one core, every server process on the other (taskset). Rounds are
# interleaved (nginx, gateway, nginx, gateway, ...) so a change in the
# machine's load hits both alike. Prints req/s, p50 and p99 for each run,
# the medians, and the gateway's ratio to nginx.
#
# Installs nothing: needs nginx, wrk and taskset on PATH (Debian:
# `apt-get install -y nginx-light wrk`). Every process it starts is stopped
# by its PID on exit.
#
#   scripts/proxy-vs-nginx.sh                 # 3 rounds of 10 s, 64 connections
#   ROUNDS=5 DURATION=20 CONNECTIONS=128 scripts/proxy-vs-nginx.sh
#   WRK_CPU=0 SERVER_CPU=1 scripts/proxy-vs-nginx.sh
#   GATEWAY_ARGS="--tries 1" scripts/proxy-vs-nginx.sh     # extra gateway flags
#   GATEWAY=/path/to/gateway scripts/proxy-vs-nginx.sh   # another build (A/B)
#   PERF_STAT=1 scripts/proxy-vs-nginx.sh     # also the proxy's CPU time and context
#                                             # switches per request (perf stat)
#   SIDE_BY_SIDE=1 scripts/proxy-vs-nginx.sh  # both proxies loaded at the same time (two
#                                             # wrk on the wrk CPU), so that each round's
#                                             # noise hits both alike; adds each proxy's CPU
#                                             # time per request (from /proc) and its ratio
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
WRK_CPU=${WRK_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
GATEWAY_ARGS=${GATEWAY_ARGS:-}
PERF_STAT=${PERF_STAT:-0}
SIDE_BY_SIDE=${SIDE_BY_SIDE:-0}
BASE_PORT=${BASE_PORT:-18080}

for tool in nginx wrk taskset; do
    command -v "$tool" >/dev/null || { echo "missing: $tool (apt-get install -y nginx-light wrk)" >&2; exit 2; }
done
NGINX=$(command -v nginx)

cd "$(dirname "$0")/.."
if [[ -z ${GATEWAY:-} ]]; then
    echo "building the gateway example (release, fat LTO: a few minutes the first time)..." >&2
    cargo build --release --example gateway -q
    GATEWAY=target/release/examples/gateway
fi

WORK=$(mktemp -d /tmp/proxy-vs-nginx.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # Bounded: a process that ignores TERM for 5 s gets KILL.
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

B1=$((BASE_PORT + 1)) B2=$((BASE_PORT + 2)) NGINX_PORT=$BASE_PORT GATEWAY_PORT=$((BASE_PORT + 3))

# What both configurations share, up to the inside of `http {`.
common() {
    cat <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $WORK/$1.pid;
error_log $WORK/$1.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/body;
    proxy_temp_path $WORK/proxy;
    fastcgi_temp_path $WORK/fastcgi;
    uwsgi_temp_path $WORK/uwsgi;
    scgi_temp_path $WORK/scgi;
    keepalive_requests 1000000;
EOF
}

# The backends: one nginx, one worker, two ports, a short body.
{
    common backends
    cat <<EOF
    server { listen 127.0.0.1:$B1; location / { return 200 "backend-1\n"; } }
    server { listen 127.0.0.1:$B2; location / { return 200 "backend-2\n"; } }
}
EOF
} >"$WORK/backends.conf"

# The proxy: round robin, upstream keep-alive, the headers ProxyDirector::new() sets
# (Host preserved, X-Forwarded-For overwritten with the peer, -Host, -Proto).
{
    common proxy
    cat <<EOF
    upstream backends {
        server 127.0.0.1:$B1;
        server 127.0.0.1:$B2;
        keepalive 128;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
EOF
} >"$WORK/proxy.conf"

start() { # name, command...
    local name=$1
    shift
    taskset -c "$SERVER_CPU" "$@" >"$WORK/$name.out" 2>&1 &
    PIDS+=($!)
}

wait_port() {
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1; logs in $WORK:" >&2
    tail -n 5 "$WORK"/*.out "$WORK"/*.log >&2 || true
    exit 1
}

# A port already taken would be measured in place of ours (the gateway even
# moves to a free port when its own is taken): refuse instead.
for port in $B1 $B2 $NGINX_PORT $GATEWAY_PORT; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "127.0.0.1:$port is already in use: stop what listens there, or set BASE_PORT" >&2
        exit 1
    fi
done
start backends "$NGINX" -p "$WORK" -c "$WORK/backends.conf"
start nginx "$NGINX" -p "$WORK" -c "$WORK/proxy.conf"
# shellcheck disable=SC2086
start gateway "$GATEWAY" --listen "127.0.0.1:$GATEWAY_PORT" \
    --backend "http://127.0.0.1:$B1" --backend "http://127.0.0.1:$B2" $GATEWAY_ARGS
for port in $B1 $B2 $NGINX_PORT $GATEWAY_PORT; do wait_port "$port"; done

# Both proxies must answer from both backends before anything is measured.
for port in $NGINX_PORT $GATEWAY_PORT; do
    seen=$(for _ in 1 2 3 4; do
        timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port; printf 'GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n' >&3; cat <&3" | tail -n 1
    done | sort -u | tr '\n' ' ')
    [[ $seen == "backend-1 backend-2 " ]] || { echo "127.0.0.1:$port answered: $seen" >&2; exit 1; }
done

# wrk's summary: requests/s, and p50, p99 in microseconds; with PERF_STAT=1
# also the proxy's CPU microseconds and context switches per
# request (perf stat on its PID for the run).
measure() { # port, pid
    local out perf_pid=""
    if [[ $PERF_STAT == 1 ]]; then
        perf stat -x, -e task-clock,context-switches -p "$2" -o "$WORK/perf.txt" &
        perf_pid=$!
        PIDS+=("$perf_pid")
    fi
    out=$(timeout $((DURATION + 30)) taskset -c "$WRK_CPU" \
        wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$1/bench")
    local per_request=""
    if [[ -n $perf_pid ]]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        local requests
        requests=$(awk '/requests in/ { print $1 }' <<<"$out")
        per_request=$(awk -F, -v n="$requests" '
            $3 == "task-clock" { cpu = $1 * 1000 / n }
            $3 == "context-switches" { cs = $1 / n }
            END { printf " %.2f %.3f", cpu, cs }' "$WORK/perf.txt")
    fi
    if grep -q "Non-2xx\|Socket errors" <<<"$out"; then
        echo "errors during the run on port $1:" >&2
        grep "Non-2xx\|Socket errors" <<<"$out" >&2
    fi
    awk '
        function us(v) {
            if (v ~ /us$/) return v + 0
            if (v ~ /ms$/) return v * 1000
            if (v ~ /s$/) return v * 1000000
            return v
        }
        /Requests\/sec/ { rps = $2 }
        $1 == "50%" { p50 = us($2) }
        $1 == "99%" { p99 = us($2) }
        END { printf "%.0f %.0f %.0f", rps, p50, p99 }' <<<"$out"
    echo "$per_request"
}

# Warm both (connections to the backends, caches) before the rounds.
DURATION_SAVED=$DURATION
DURATION=2
NGINX_PID=${PIDS[1]} GATEWAY_PID=${PIDS[2]}
measure "$NGINX_PORT" "$NGINX_PID" >/dev/null
measure "$GATEWAY_PORT" "$GATEWAY_PID" >/dev/null
DURATION=$DURATION_SAVED

# SIDE_BY_SIDE=1: one round loads both proxies at once; prints a line per
# proxy: name, req/s, p50, p99, CPU microseconds per request (user and
# system time from /proc, which counts in clock ticks: about 400 of them
# per proxy in a round of 8 s).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
side_by_side() {
    local n0 g0 n1 g1 wn wg proxy ticks
    n0=$(cpu_ticks "$NGINX_PID") g0=$(cpu_ticks "$GATEWAY_PID")
    timeout $((DURATION + 30)) taskset -c "$WRK_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" \
        --latency "http://127.0.0.1:$NGINX_PORT/bench" >"$WORK/wrk.nginx" &
    wn=$!
    timeout $((DURATION + 30)) taskset -c "$WRK_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" \
        --latency "http://127.0.0.1:$GATEWAY_PORT/bench" >"$WORK/wrk.gateway" &
    wg=$!
    wait "$wn" "$wg"
    n1=$(cpu_ticks "$NGINX_PID") g1=$(cpu_ticks "$GATEWAY_PID")
    for proxy in nginx gateway; do
        ticks=$((n1 - n0))
        [[ $proxy == gateway ]] && ticks=$((g1 - g0))
        if grep -q "Non-2xx\|Socket errors" "$WORK/wrk.$proxy"; then
            echo "errors during the run of $proxy:" >&2
            grep "Non-2xx\|Socket errors" "$WORK/wrk.$proxy" >&2
        fi
        awk -v name="$proxy" -v ticks="$ticks" -v hz="$(getconf CLK_TCK)" '
            function us(v) {
                if (v ~ /us$/) return v + 0
                if (v ~ /ms$/) return v * 1000
                if (v ~ /s$/) return v * 1000000
                return v
            }
            /requests in/ { n = $1 }
            /Requests\/sec/ { rps = $2 }
            $1 == "50%" { p50 = us($2) }
            $1 == "99%" { p99 = us($2) }
            END { printf "%s %.0f %.0f %.0f %.2f\n", name, rps, p50, p99, ticks * 1000000 / hz / n }' \
            "$WORK/wrk.$proxy"
    done
}

echo "# wrk -t1 -c$CONNECTIONS -d${DURATION}s on cpu $WRK_CPU; servers on cpu $SERVER_CPU; $(nproc) cpus; load $(cut -d' ' -f1-3 /proc/loadavg)"
if [[ $SIDE_BY_SIDE == 1 ]]; then
    echo "# side by side: both proxies loaded at the same time"
    printf "%-6s %-8s %10s %9s %9s %12s\n" round proxy "req/s" "p50 us" "p99 us" "cpu us/req"
elif [[ $PERF_STAT == 1 ]]; then
    printf "%-6s %-8s %10s %9s %9s %12s %10s\n" round proxy "req/s" "p50 us" "p99 us" \
        "cpu us/req" "cs/req"
else
    printf "%-6s %-8s %10s %9s %9s\n" round proxy "req/s" "p50 us" "p99 us"
fi
: >"$WORK/results"
for round in $(seq "$ROUNDS"); do
    if [[ $SIDE_BY_SIDE == 1 ]]; then
        while read -r proxy rps p50 p99 cpu; do
            printf "%-6s %-8s %10s %9s %9s %12s\n" "$round" "$proxy" "$rps" "$p50" "$p99" "$cpu"
            echo "$round $proxy $rps $p50 $p99 $cpu" >>"$WORK/results"
        done < <(side_by_side)
        continue
    fi
    for proxy in nginx gateway; do
        port=$NGINX_PORT pid=$NGINX_PID
        [[ $proxy == gateway ]] && port=$GATEWAY_PORT pid=$GATEWAY_PID
        read -r rps p50 p99 cpu cs < <(measure "$port" "$pid")
        if [[ $PERF_STAT == 1 ]]; then
            printf "%-6s %-8s %10s %9s %9s %12s %10s\n" "$round" "$proxy" "$rps" "$p50" "$p99" "$cpu" "$cs"
        else
            printf "%-6s %-8s %10s %9s %9s\n" "$round" "$proxy" "$rps" "$p50" "$p99"
        fi
        echo "$round $proxy $rps $p50 $p99" >>"$WORK/results"
    done
done

# Medians over the rounds, and the ratio of each round's pair.
awk '
    function median(a, n,   i, j, t) {
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { n[$2]++; rps[$2, n[$2]] = $3; p50[$2, n[$2]] = $4; p99[$2, n[$2]] = $5; cpu[$2, n[$2]] = $6 }
    END {
        for (p in n) {
            for (i = 1; i <= n[p]; i++) { r[i] = rps[p, i]; a[i] = p50[p, i]; b[i] = p99[p, i] }
            mr[p] = median(r, n[p]); m50[p] = median(a, n[p]); m99[p] = median(b, n[p])
        }
        printf "median nginx   %10.0f %9.0f %9.0f\n", mr["nginx"], m50["nginx"], m99["nginx"]
        printf "median gateway %10.0f %9.0f %9.0f\n", mr["gateway"], m50["gateway"], m99["gateway"]
        printf "ratio to nginx (req/s): per round"
        for (i = 1; i <= n["gateway"]; i++) printf " %.2f", rps["gateway", i] / rps["nginx", i]
        printf "; medians %.2fx; p99 %.2fx nginx'"'"'s\n", mr["gateway"] / mr["nginx"], m99["gateway"] / m99["nginx"]
        if (cpu["gateway", 1] != "") {
            printf "CPU per request, gateway to nginx: per round"
            for (i = 1; i <= n["gateway"]; i++) { c[i] = cpu["gateway", i] / cpu["nginx", i]; printf " %.2f", c[i] }
            printf "; median %.2fx\n", median(c, n["gateway"])
        }
    }' "$WORK/results"
