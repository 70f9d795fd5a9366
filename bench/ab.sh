#!/usr/bin/env bash
# A/B comparison of two twinward builds: each serves the bench route from a fresh data
# directory of its own (an audit table that grew in earlier runs makes appends dearer, so
# neither may inherit one), in front of one shared upstream, and wrk measures them in turns
# at full load. Prints, round by round, requests/s and the CPU each spent per request (all
# its threads, from /proc), then the medians.
#
#   bash bench/ab.sh OLD_TWINWARD NEW_TWINWARD
#
# Settings (environment): ROUNDS (default 6), DURATION (s per run, 8), CONNECTIONS (64),
# THREADS (wrk threads, 2), WORKERS (twinward workers, default: cores). Needs wrk and curl;
# the upstream is examples/bench_upstream.rs, built with the production profile if missing.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -eq 2 ] || { echo "usage: bash bench/ab.sh OLD_TWINWARD NEW_TWINWARD" >&2; exit 2; }
ROUNDS="${ROUNDS:-6}"
DURATION="${DURATION:-8}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
WORKERS="${WORKERS:-$(nproc)}"

die() {
  echo "bench/ab.sh: $*" >&2
  exit 1
}
for tool in wrk curl; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (apt-get install wrk curl)"
done
BINS=("$(realpath "$1")" "$(realpath "$2")")
for bin in "${BINS[@]}"; do [ -x "$bin" ] || die "$bin is not an executable"; done

TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
case "$TARGET" in /*) ;; *) TARGET="$REPO/$TARGET" ;; esac
UPSTREAM_BIN="$TARGET/production/examples/bench_upstream"
[ -x "$UPSTREAM_BIN" ] || (cd "$REPO" && cargo build --profile production --quiet --example bench_upstream)

WORK="$(mktemp -d "${TMPDIR:-/tmp}/twinward-ab.XXXXXX")"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

free_port UP_PORT
"$UPSTREAM_BIN" "127.0.0.1:$UP_PORT" 1 2>"$WORK/upstream.log" &
PIDS+=($!)
wait_status "http://127.0.0.1:$UP_PORT/plant-7/state" 200 || die "upstream did not answer: $(cat "$WORK/upstream.log")"

URLS=() TOKENS=() GW_PIDS=()
for i in 0 1; do
  dir="$WORK/gw$i"
  free_port port
  free_port admin_port
  gateway_dir "$dir" "$port" "$admin_port" "$UP_PORT" "$WORKERS"
  token="$("${BINS[$i]}" token create --config "$dir/twinward.toml" --service-account bench-sim \
    --role sim-runner --ttl 1d 2>"$dir/token.log")" || die "token create failed: $(cat "$dir/token.log")"
  "${BINS[$i]}" serve --config "$dir/twinward.toml" 2>"$dir/serve.log" &
  PIDS+=($!)
  GW_PIDS+=($!)
  URLS+=("http://127.0.0.1:$port/plant-7/state")
  TOKENS+=("$token")
  wait_status "${URLS[$i]}" 200 -H "Authorization: Bearer $token" \
    || die "${BINS[$i]} did not proxy a 200: $(cat "$dir/serve.log")"
done

# ticks PID: user + system clock ticks of all the process's threads so far.
ticks() {
  local t=0 task
  for task in /proc/"$1"/task/*; do
    t=$((t + $(awk '{ print $14 + $15 }' "$task/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
HZ="$(getconf CLK_TCK)"
echo "== A ${BINS[0]}"
echo "== B ${BINS[1]}"
echo "== wrk -t$THREADS -c$CONNECTIONS, ${DURATION}s per run, $ROUNDS rounds, twinward with $WORKERS workers"
RESULTS=("" "")
for round in $(seq 1 "$ROUNDS"); do
  line="round $round:"
  for i in 0 1; do
    before="$(ticks "${GW_PIDS[$i]}")"
    out="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" \
      -H "Authorization: Bearer ${TOKENS[$i]}" "${URLS[$i]}")" || die "wrk failed: $out"
    after="$(ticks "${GW_PIDS[$i]}")"
    ! grep -q "Non-2xx" <<<"$out" || die "responses other than 200: $out"
    rps="$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")"
    n="$(awk '/requests in/ { print $1 }' <<<"$out")"
    cpu="$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$n" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')"
    RESULTS[$i]+="$rps $cpu"$'\n'
    line+="$(printf '  %s %8.0f req/s %6s µs/req' "$([ "$i" = 0 ] && echo A || echo B)" "$rps" "$cpu")"
  done
  echo "$line"
done
median() { sort -n | awk '{ v[NR] = $0 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for i in 0 1; do
  rps="$(printf '%s' "${RESULTS[$i]}" | awk '{ print $1 }' | median)"
  cpu="$(printf '%s' "${RESULTS[$i]}" | awk '{ print $2 }' | median)"
  printf 'median %s: %.0f req/s, %.2f µs of CPU per request\n' "$([ "$i" = 0 ] && echo A || echo B)" "$rps" "$cpu"
done
