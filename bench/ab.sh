#!/usr/bin/env bash
# A/B comparison of two twinward builds: each serves the bench route from a fresh data
# directory of its own (an audit table that grew in earlier runs makes appends dearer, so
# neither may inherit one), in front of one shared upstream, and wrk measures them in turns
# at full load. Prints, round by round, requests/s, p99 and the CPU each spent per request
# (all its threads, and of that its audit threads, from /proc), then the medians and the worst p99 (a rare stall shows
# there, not in a median). With RATE set, each round also sends RATE req/s paced (as
# bench/proxy.sh does with wrk) directly to the upstream and through each build, and prints
# the p99 each build adds to the direct run's. With WITH_NGINX=1, each round also measures nginx
# as a plain reverse proxy in front of the same upstream (bench/proxy.sh's (b)), and prints
# each build's c/b: its requests/s over nginx's in the same round. The targets take turns
# in an order that rotates from round to round, so none always runs first or last.
#
#   bash bench/ab.sh OLD_TWINWARD NEW_TWINWARD
#
# Settings (environment): ROUNDS (default 6), DURATION (s per run, 8), CONNECTIONS (64),
# THREADS (wrk threads, 2), WORKERS (twinward workers, default: cores), RATE (req/s, unset:
# full load only), FULL (0: with RATE, the paced runs only), WITH_NGINX (1: measure nginx too),
# KEEP=1 keeps the temp directory (kept anyway when the run fails).
# Needs wrk and curl (and nginx for WITH_NGINX=1); the upstream is examples/bench_upstream.rs,
# built with the production profile if missing.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -eq 2 ] || { echo "usage: bash bench/ab.sh OLD_TWINWARD NEW_TWINWARD" >&2; exit 2; }
ROUNDS="${ROUNDS:-6}"
DURATION="${DURATION:-8}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
WORKERS="${WORKERS:-$(nproc)}"
RATE="${RATE:-}"
FULL="${FULL:-1}"
WITH_NGINX="${WITH_NGINX:-0}"
LUA="$REPO/bench/wrk-report.lua"
export PATH="$PATH:/usr/sbin:/sbin"

die() {
  echo "bench/ab.sh: $*" >&2
  exit 1
}
[ "$FULL" = 1 ] || [ -n "$RATE" ] || die "FULL=0 needs RATE"
[ "$WITH_NGINX" = 0 ] || [ "$FULL" = 1 ] || die "WITH_NGINX=1 compares full-load throughput: it needs FULL=1"
TOOLS="wrk curl"
[ "$WITH_NGINX" = 0 ] || TOOLS+=" nginx"
for tool in $TOOLS; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (apt-get install $TOOLS)"
done
BINS=("$(realpath "$1")" "$(realpath "$2")")
for bin in "${BINS[@]}"; do [ -x "$bin" ] || die "$bin is not an executable"; done

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

target_dir
UPSTREAM_BIN="$TARGET/production/examples/bench_upstream"
[ -x "$UPSTREAM_BIN" ] || (cd "$REPO" && cargo build --profile production --quiet --example bench_upstream)

work_dir ab

free_port UP_PORT
"$UPSTREAM_BIN" "127.0.0.1:$UP_PORT" 1 2>"$WORK/upstream.log" &
PIDS+=($!)
wait_status "http://127.0.0.1:$UP_PORT/plant-7/state" 200 || die "upstream did not answer: $(cat "$WORK/upstream.log")"

if [ "$WITH_NGINX" = 1 ]; then
  free_port NGINX_PORT
  start_nginx "$WORK/nginx" "$NGINX_PORT" "$UP_PORT" "$WORKERS"
  NGINX_URL="http://127.0.0.1:$NGINX_PORT/plant-7/state"
fi

URLS=() TOKENS=() GW_PIDS=() ADMINS=()
for i in 0 1; do
  dir="$WORK/gw$i"
  free_port port
  free_port admin_port
  gateway_dir "$dir" "$port" "$admin_port" "$UP_PORT" "$WORKERS"
  ADMINS+=("$admin_port")
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

HZ="$(getconf CLK_TCK)"
# run URL RATE [wrk args...]: "rps p99_us requests" of one wrk run (RATE 0: full load).
run() {
  local url=$1 rate=$2 out line
  shift 2
  out="$(WRK_RATE="$rate" WRK_THREADS="$THREADS" wrk -t"$THREADS" -c"$CONNECTIONS" \
    -d"${DURATION}s" --latency -s "$LUA" "$@" "$url")" || die "wrk failed: $out"
  line="$(grep '^WRK_RESULT ' <<<"$out")" || die "no result: $out"
  read -r _ rps _ p99 n non2xx _ <<<"$(sed 's/[a-z0-9_]*=//g' <<<"$line")"
  [ "$non2xx" = 0 ] || die "responses other than 2xx/3xx: $out"
  echo "$rps $p99 $n"
}
DIRECT_URL="http://127.0.0.1:$UP_PORT/plant-7/state"
name() { [ "$1" = 0 ] && echo A || echo B; }
echo "== A ${BINS[0]}"
echo "== B ${BINS[1]}"
echo "== wrk -t$THREADS -c$CONNECTIONS, ${DURATION}s per run, $ROUNDS rounds, twinward with $WORKERS workers${RATE:+, paced at $RATE req/s}"
# per_request TICKS N: clock ticks spent over N requests, as µs per request.
per_request() { awk -v t="$1" -v hz="$HZ" -v n="$2" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }'; }
ms() { awk -v us="$1" 'BEGIN { print us / 1000 }'; }
RESULTS=("" "") NGINX_RESULTS=""
for round in $(seq 1 "$ROUNDS"); do
  # Who runs when rotates: A B nginx, then B nginx A, then nginx A B, and so on.
  order=(0 1)
  [ "$WITH_NGINX" = 0 ] || order+=(n)
  shift_by=$(((round - 1) % ${#order[@]}))
  order=("${order[@]:$shift_by}" "${order[@]:0:$shift_by}")
  declare -A line_of=()
  nginx_rps=""
  for i in "${order[@]}"; do
    if [ "$i" = n ]; then
      # shellcheck disable=SC2086
      read -r before _ <<<"$(cpu_ticks $NGINX_PIDS)"
      read -r rps p99 n <<<"$(run "$NGINX_URL" 0)"
      # shellcheck disable=SC2086
      read -r after _ <<<"$(cpu_ticks $NGINX_PIDS)"
      nginx_rps=$rps
      NGINX_RESULTS+="$rps $(per_request $((after - before)) "$n") $p99"$'\n'
      line_of[n]="$(printf '  nginx %6.0f req/s %5s µs/req p99 %6.2f ms' "$rps" \
        "$(per_request $((after - before)) "$n")" "$(ms "$p99")")"
      continue
    fi
    rps=0 p99=0 cpu=0 audit=0
    if [ "$FULL" = 1 ]; then
      read -r before audit_before <<<"$(cpu_ticks "${GW_PIDS[$i]}")"
      read -r rps p99 n <<<"$(run "${URLS[$i]}" 0 -H "Authorization: Bearer ${TOKENS[$i]}")"
      read -r after audit_after <<<"$(cpu_ticks "${GW_PIDS[$i]}")"
      cpu="$(per_request $((after - before)) "$n")"
      audit="$(per_request $((audit_after - audit_before)) "$n")"
    fi
    added=""
    if [ -n "$RATE" ]; then
      read -r _ direct_p99 _ <<<"$(run "$DIRECT_URL" "$RATE")"
      read -r _ paced_p99 _ <<<"$(run "${URLS[$i]}" "$RATE" -H "Authorization: Bearer ${TOKENS[$i]}")"
      added=$((paced_p99 - direct_p99))
    fi
    RESULTS[$i]+="$rps $cpu $p99 ${added:-0} $audit"
    line_of[$i]="  $(name "$i")"
    [ "$FULL" = 0 ] || line_of[$i]+="$(printf ' %6.0f req/s %5s µs/req (audit %s) p99 %6.2f ms' "$rps" "$cpu" \
      "$audit" "$(ms "$p99")")"
    [ -z "$RATE" ] || line_of[$i]+="$(printf ' paced adds %5.2f ms' "$(ms "$added")")"
  done
  # Each build's c/b pairs it with the nginx run of its own round.
  for i in 0 1; do
    cb=0
    if [ -n "$nginx_rps" ]; then
      read -r rps _ <<<"${RESULTS[$i]##*$'\n'}"
      cb="$(awk -v c="$rps" -v b="$nginx_rps" 'BEGIN { printf "%.3f", c / b }')"
      line_of[$i]+=" c/b $cb"
    fi
    RESULTS[$i]+=" $cb"$'\n'
  done
  line="round $round:${line_of[0]}${line_of[1]}${line_of[n]:-}"
  unset line_of
  echo "$line"
done
median() { sort -n | awk '{ v[NR] = $0 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
column() { printf '%s' "${RESULTS[$1]}" | awk -v f="$2" '{ print $f }'; }
for i in 0 1; do
  printf 'median %s:' "$(name "$i")"
  [ "$FULL" = 0 ] || printf ' %.0f req/s, %.2f µs of CPU per request (audit threads %.2f), p99 %.2f ms (worst %.2f);' \
    "$(column "$i" 1 | median)" "$(column "$i" 2 | median)" "$(column "$i" 5 | median)" \
    "$(awk -v us="$(column "$i" 3 | median)" 'BEGIN { print us / 1000 }')" \
    "$(awk -v us="$(column "$i" 3 | sort -n | tail -1)" 'BEGIN { print us / 1000 }')"
  [ -z "$RATE" ] || printf ' paced at %s req/s adds %.2f ms at p99 (worst %.2f);' "$RATE" \
    "$(awk -v us="$(column "$i" 4 | median)" 'BEGIN { print us / 1000 }')" \
    "$(awk -v us="$(column "$i" 4 | sort -n | tail -1)" 'BEGIN { print us / 1000 }')"
  [ "$WITH_NGINX" = 0 ] || printf ' c/b %.3f (lowest %.3f);' "$(column "$i" 6 | median)" "$(column "$i" 6 | sort -n | head -1)"
  # How often the build's audit writer appended without waiting for idle time.
  printf ' audit takeovers %s\n' "$(curl -s "http://127.0.0.1:${ADMINS[$i]}/metrics" \
    | awk '/^twinward_audit_takeovers_total / { print $2 }')"
done
if [ "$WITH_NGINX" = 1 ]; then
  nginx_column() { printf '%s' "$NGINX_RESULTS" | awk -v f="$1" '{ print $f }'; }
  printf 'median nginx: %.0f req/s, %.2f µs of CPU per request, p99 %.2f ms\n' \
    "$(nginx_column 1 | median)" "$(nginx_column 2 | median)" "$(ms "$(nginx_column 3 | median)")"
fi
