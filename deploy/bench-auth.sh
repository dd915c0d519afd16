#!/usr/bin/env bash
# What authentication costs per request: one route, served by two nodes that differ only in
# `auth.jwt`, measured with wrk in alternating runs (open, token, open, token, ...), so both
# see the same machine load.
#
#   node "open":  standalone profile on SQLite, auth.jwt disabled (the API is open)
#   node "token": the same with auth.jwt enabled (EdDSA token key); requests carry a viewer
#                 token made with `kos token create`
#
# Prints one line per run and a summary (median req/s and p99 per side, ratio token/open).
#
# Usage: deploy/bench-auth.sh [KOS_BINARY] [DURATION] [ROUNDS] [ROUTE]
#   defaults: $CARGO_TARGET_DIR/release/kos (else target/release/kos), 10s, 3,
#   /api/config/status. wrk settings: WRK_THREADS (2), WRK_CONNECTIONS (32).
# Needs wrk and curl. Binds 127.0.0.1:7431 and 127.0.0.1:7432 (KOS_BENCH_PORT_OPEN/_TOKEN).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KOS="${1:-${CARGO_TARGET_DIR:-$ROOT/target}/release/kos}"
DURATION="${2:-10s}"
ROUNDS="${3:-3}"
ROUTE="${4:-/api/config/status}"
THREADS="${WRK_THREADS:-2}"
CONNS="${WRK_CONNECTIONS:-32}"
PORT_OPEN="${KOS_BENCH_PORT_OPEN:-7431}"
PORT_TOKEN="${KOS_BENCH_PORT_TOKEN:-7432}"

command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install -y wrk)" >&2; exit 2; }
[ -x "$KOS" ] || { echo "no kos binary at $KOS" >&2; exit 2; }

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

start_node() { # name port jwt
    local dir="$WORK/$1"
    "$KOS" init --profile standalone --dir "$dir" >/dev/null
    {
        echo "KOS_API__LISTEN=127.0.0.1:$2"
        echo "KOS_AUTH__JWT=$3"
    } >>"$dir/system.env"
    "$KOS" --dir "$dir" run >"$WORK/$1.log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 1 200); do
        curl -fsS "http://127.0.0.1:$2/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "node $1 did not become ready:" >&2
    cat "$WORK/$1.log" >&2
    exit 1
}

start_node open "$PORT_OPEN" disabled
start_node token "$PORT_TOKEN" enabled
TOKEN="$("$KOS" --dir "$WORK/token" token create --role viewer --ttl 1h --sub bench)"

# Sanity: the token node refuses a request without the token and serves one with it.
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT_TOKEN$ROUTE")
[ "$code" = 401 ] || { echo "token node answered $code without a token" >&2; exit 1; }
curl -fsS -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT_TOKEN$ROUTE" >/dev/null
curl -fsS "http://127.0.0.1:$PORT_OPEN$ROUTE" >/dev/null

# p99 in ms from wrk's latency distribution ("99%  12.34ms" / "1.02s" / "850.00us").
p99_ms() {
    awk '$1 == "99%" {
        v = $2
        if (v ~ /us$/) { sub(/us$/, "", v); print v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); print v + 0 }
        else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000 }
    }'
}
rps() { awk '$1 == "Requests/sec:" { print $2 }'; }

run() { # side port [header]
    local out
    if [ -n "${3:-}" ]; then
        out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -H "$3" "http://127.0.0.1:$2$ROUTE")
    else
        out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$2$ROUTE")
    fi
    if echo "$out" | grep -q "Non-2xx"; then
        echo "$1: non-2xx responses:" >&2
        echo "$out" >&2
        exit 1
    fi
    local r p
    r=$(echo "$out" | rps)
    p=$(echo "$out" | p99_ms)
    printf '%-6s round %d  %10.1f req/s  p99 %7.2f ms\n' "$1" "$round" "$r" "$p"
    echo "$1 $r $p" >>"$WORK/results"
}

echo "kos: $KOS; wrk -t$THREADS -c$CONNS -d$DURATION; route $ROUTE; $ROUNDS rounds"
# Warm-up (connections, caches, page faults) on both, not recorded.
wrk -t"$THREADS" -c"$CONNS" -d2s "http://127.0.0.1:$PORT_OPEN$ROUTE" >/dev/null
wrk -t"$THREADS" -c"$CONNS" -d2s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT_TOKEN$ROUTE" >/dev/null
for round in $(seq 1 "$ROUNDS"); do
    run open "$PORT_OPEN"
    run token "$PORT_TOKEN" "Authorization: Bearer $TOKEN"
done

median() { sort -n | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
open_rps=$(awk '$1 == "open" { print $2 }' "$WORK/results" | median)
token_rps=$(awk '$1 == "token" { print $2 }' "$WORK/results" | median)
open_p99=$(awk '$1 == "open" { print $3 }' "$WORK/results" | median)
token_p99=$(awk '$1 == "token" { print $3 }' "$WORK/results" | median)
echo "median: open $open_rps req/s p99 $open_p99 ms; token $token_rps req/s p99 $token_p99 ms"
awk -v a="$token_rps" -v b="$open_rps" 'BEGIN { printf "ratio token/open (req/s): %.2f\n", a / b }'
