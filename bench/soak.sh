#!/usr/bin/env bash
# Sustained full load on twinward, to see what the audit trail does over minutes: wrk at
# full speed through the gateway (API token, Cedar decision, credential, audited) for
# DURATION seconds, with the SQLite database and its write-ahead log sampled every
# INTERVAL seconds beside the events committed and queued (from /metrics). Under full
# load no core is idle, so the idle-class housekeeper that checkpoints the log gets none:
# the log must stay bounded all the same (the appender checkpoints itself once the
# housekeeper falls far behind), and the queue must not grow without end.
#
#   bash bench/soak.sh                     # 300 s, sampled every 10 s
#   DURATION=600 INTERVAL=30 bash bench/soak.sh
#
# Settings (environment): DURATION (s, 300), INTERVAL (s, 10), CONNECTIONS (64), THREADS
# (wrk threads, 2), WORKERS (twinward workers, default: cores), TWINWARD_BIN (a twinward
# binary to measure instead of building one), KEEP=1 keeps the temp directory. Needs wrk
# and curl.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${DURATION:-300}"
INTERVAL="${INTERVAL:-10}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
WORKERS="${WORKERS:-$(nproc)}"

die() {
  echo "bench/soak.sh: $*" >&2
  exit 1
}

for tool in wrk curl cargo; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (apt-get install wrk curl)"
done

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
work_dir soak

target_dir
if [ -n "${TWINWARD_BIN:-}" ]; then
  TWINWARD="$TWINWARD_BIN"
else
  echo "== building the production profile (twinward, examples/bench_upstream)"
  (cd "$REPO" && cargo build --profile production --quiet --bin twinward --example bench_upstream)
  TWINWARD="$TARGET/production/twinward"
fi
UPSTREAM_BIN="$TARGET/production/examples/bench_upstream"
[ -x "$TWINWARD" ] && [ -x "$UPSTREAM_BIN" ] \
  || die "production binaries not found under $TARGET/production (cargo build --profile production --bin twinward --example bench_upstream)"

free_port UP_PORT
free_port TW_PORT
free_port TW_ADMIN_PORT

"$UPSTREAM_BIN" "127.0.0.1:$UP_PORT" 1 2>"$WORK/upstream.log" &
PIDS+=($!)
wait_status "http://127.0.0.1:$UP_PORT/plant-7/state" 200 \
  || die "upstream did not answer: $(cat "$WORK/upstream.log")"

gateway_dir "$WORK/twinward" "$TW_PORT" "$TW_ADMIN_PORT" "$UP_PORT" "$WORKERS"
CONFIG="$WORK/twinward/twinward.toml"
TOKEN="$("$TWINWARD" token create --config "$CONFIG" --service-account bench-sim \
  --role sim-runner --ttl 1d 2>"$WORK/twinward/token.log")" \
  || die "token create failed: $(cat "$WORK/twinward/token.log")"
"$TWINWARD" serve --config "$CONFIG" 2>"$WORK/twinward/serve.log" &
PIDS+=($!)
wait_status "http://127.0.0.1:$TW_ADMIN_PORT/readyz" 200 \
  || die "twinward did not become ready: $(cat "$WORK/twinward/serve.log")"
URL="http://127.0.0.1:$TW_PORT/plant-7/state"
wait_status "$URL" 200 -H "Authorization: Bearer $TOKEN" \
  || die "twinward did not proxy a 200: $(cat "$WORK/twinward/serve.log")"

DB="$WORK/twinward/twinward.db"
metric() {
  curl -s "http://127.0.0.1:$TW_ADMIN_PORT/metrics" | awk -v m="$1" '$1 == m { printf "%d", $2 }'
}
size() { stat -c %s "$1" 2>/dev/null || echo 0; }
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

echo "== $DURATION s of wrk at full load ($CONNECTIONS connections, $THREADS threads), sampled every $INTERVAL s"
wrk -t "$THREADS" -c "$CONNECTIONS" -d "${DURATION}s" -H "Authorization: Bearer $TOKEN" "$URL" \
  >"$WORK/wrk.txt" 2>&1 &
WRK_PID=$!
PIDS+=("$WRK_PID")
printf '%6s %12s %12s %10s %10s %10s\n' "t (s)" "committed" "events/s" "queued" "db (MB)" "wal (MB)"
start=$SECONDS
last_events=0
last_t=0
max_wal=0
max_queued=0
while kill -0 "$WRK_PID" 2>/dev/null; do
  sleep "$INTERVAL"
  t=$((SECONDS - start))
  events="$(metric twinward_audit_events_total)"
  queued="$(metric twinward_audit_queued_events)"
  wal="$(size "$DB-wal")"
  [ "$wal" -gt "$max_wal" ] && max_wal=$wal
  [ "${queued:-0}" -gt "$max_queued" ] && max_queued=${queued:-0}
  rate=$(((${events:-0} - last_events) / (t - last_t > 0 ? t - last_t : 1)))
  printf '%6d %12d %12d %10d %10s %10s\n' "$t" "${events:-0}" "$rate" "${queued:-0}" \
    "$(mb "$(size "$DB")")" "$(mb "$wal")"
  last_events=${events:-0}
  last_t=$t
done
wait "$WRK_PID" || true
echo "== wrk"
grep -E "Requests/sec|Latency|requests in" "$WORK/wrk.txt" || cat "$WORK/wrk.txt"
echo "== largest write-ahead log $(mb "$max_wal") MB, longest audit queue $max_queued events"
