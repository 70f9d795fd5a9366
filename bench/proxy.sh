#!/usr/bin/env bash
# Proxy benchmark, side by side on one machine and one upstream:
#   (a) wrk -> upstream                         (direct)
#   (b) wrk -> nginx -> upstream                (plain reverse proxy, keep-alive upstream)
#   (c) wrk -> twinward -> upstream             (API token, Cedar decision over the shipped
#                                                policies, twin credential attached, audited)
#   (d) wrk -> haproxy (mode tcp) -> upstream   (a byte relay with no HTTP at all: the floor
#                                                any proxy pays here for the extra hop;
#                                                measured where haproxy is installed)
# The upstream is examples/bench_upstream.rs (hyper, 64-byte 200). Everything shares the
# machine's cores, the load generators included. Prints requests/s, p50 and p99 for each at full load, with
# the CPU time nginx and twinward spent per request (all their threads, from /proc; for
# twinward also the part its audit writer spent), the ratios c/a and c/b, then p50/p99 of
# all three at the same paced rate, half of twinward's maximum (paced by wrk, which sends
# in bursts of about a millisecond's worth, see bench/wrk-report.lua; PACER=even sends them
# evenly spaced with examples/bench_load.rs instead), with how busy the machine's
# cores were, how much time the hypervisor stole meanwhile and how long the proxy's and the
# upstream's threads waited for a core per request, and the p99 twinward adds there (and
# what nginx and the relay add).
#
#   bash bench/proxy.sh                  # 3 rounds of 10 s per measurement
#   DURATION=30 bash bench/proxy.sh      # longer
#
# Settings (environment): DURATION (s, default 10), ROUNDS (measurements per target, taking
# turns; the median is reported, default 3), WARMUP (s, 3), CONNECTIONS (64),
# THREADS (wrk threads, 2), WORKERS (nginx and twinward workers, default: cores),
# UPSTREAM_WORKERS (1), TWINWARD_BIN (a twinward binary to measure instead of building
# one; for A/B runs), PACER (wrk, the default, or even: what sends the paced load),
# RELAY=0 skips (d), KEEP=1 keeps the temp directory (configs, logs,
# wrk output). Needs wrk, nginx and curl (apt-get install wrk nginx curl); (d) needs haproxy.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
WARMUP="${WARMUP:-3}"
CONNECTIONS="${CONNECTIONS:-64}"
PACER="${PACER:-wrk}"
THREADS="${THREADS:-2}"
CORES="$(nproc)"
WORKERS="${WORKERS:-$CORES}"
UPSTREAM_WORKERS="${UPSTREAM_WORKERS:-1}"
PATH_UNDER_TEST="/plant-7/state"
LUA="$REPO/bench/wrk-report.lua"
export PATH="$PATH:/usr/sbin:/sbin"

die() {
  echo "bench/proxy.sh: $*" >&2
  exit 1
}

for tool in wrk nginx curl cargo; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (apt-get install wrk nginx curl)"
done


# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
work_dir bench

# ---------------------------------------------------------------- build

target_dir
if [ -n "${TWINWARD_BIN:-}" ]; then
  # A/B runs: a twinward binary built elsewhere; the upstream must already be built.
  TWINWARD="$TWINWARD_BIN"
else
  echo "== building the production profile (twinward, examples/bench_upstream, examples/bench_load)"
  (cd "$REPO" && cargo build --profile production --quiet --bin twinward --example bench_upstream --example bench_load)
  TWINWARD="$TARGET/production/twinward"
fi
UPSTREAM_BIN="$TARGET/production/examples/bench_upstream"
LOAD_BIN="$TARGET/production/examples/bench_load"
[ -x "$TWINWARD" ] && [ -x "$UPSTREAM_BIN" ] && [ -x "$LOAD_BIN" ] \
  || die "production binaries not found under $TARGET/production (cargo build --profile production --bin twinward --example bench_upstream --example bench_load)"
case "$PACER" in wrk | even) ;; *) die "PACER=$PACER: expected wrk or even" ;; esac

free_port UP_PORT
free_port NGINX_PORT
free_port TW_PORT
free_port TW_ADMIN_PORT
free_port RELAY_PORT

# ---------------------------------------------------------------- upstream

"$UPSTREAM_BIN" "127.0.0.1:$UP_PORT" "$UPSTREAM_WORKERS" 2>"$WORK/upstream.log" &
PIDS+=($!)
UP_PID=$!
DIRECT_URL="http://127.0.0.1:$UP_PORT$PATH_UNDER_TEST"
wait_status "$DIRECT_URL" 200 || die "upstream did not answer 200 on $DIRECT_URL: $(cat "$WORK/upstream.log")"

# ---------------------------------------------------------------- nginx

start_nginx "$WORK/nginx" "$NGINX_PORT" "$UP_PORT" "$WORKERS"
NGINX_URL="http://127.0.0.1:$NGINX_PORT$PATH_UNDER_TEST"

# ---------------------------------------------------------------- TCP relay
# haproxy in TCP mode copies bytes between each client connection and an upstream
# connection of its own and parses nothing. What it adds at p99 is what the extra hop alone
# costs on this machine (one more process waking on the shared cores, twice per request),
# below which no HTTP proxy can go.
MEASURE_RELAY=0
if [ "${RELAY:-1}" != 0 ] && command -v haproxy >/dev/null 2>&1; then
  MEASURE_RELAY=1
  mkdir -p "$WORK/relay"
  cat >"$WORK/relay/haproxy.cfg" <<HAPROXY
global
  nbthread $WORKERS
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend relay
  bind 127.0.0.1:$RELAY_PORT
  default_backend upstream
backend upstream
  server twin 127.0.0.1:$UP_PORT
HAPROXY
  haproxy -c -q -f "$WORK/relay/haproxy.cfg" >"$WORK/relay/check.log" 2>&1 \
    || die "haproxy rejected its config: $(cat "$WORK/relay/check.log")"
  haproxy -db -f "$WORK/relay/haproxy.cfg" >"$WORK/relay/haproxy.log" 2>&1 &
  PIDS+=($!)
  RELAY_PID=$!
  RELAY_URL="http://127.0.0.1:$RELAY_PORT$PATH_UNDER_TEST"
  wait_status "$RELAY_URL" 200 || die "haproxy did not relay a 200 on $RELAY_URL: $(cat "$WORK/relay/haproxy.log")"
else
  echo "== haproxy is not installed (or RELAY=0): no TCP relay (d) in this run"
fi

# ---------------------------------------------------------------- twinward

gateway_dir "$WORK/twinward" "$TW_PORT" "$TW_ADMIN_PORT" "$UP_PORT" "$WORKERS"
TW_CONFIG="$WORK/twinward/twinward.toml"
TOKEN="$("$TWINWARD" token create --config "$TW_CONFIG" --service-account bench-sim \
  --role sim-runner --ttl 1d 2>"$WORK/twinward/token.log")" \
  || die "token create failed: $(cat "$WORK/twinward/token.log")"
[ -n "$TOKEN" ] || die "token create printed no token"
"$TWINWARD" serve --config "$TW_CONFIG" 2>"$WORK/twinward/serve.log" &
PIDS+=($!)
TW_PID=$!
wait_status "http://127.0.0.1:$TW_ADMIN_PORT/readyz" 200 \
  || die "twinward did not become ready: $(cat "$WORK/twinward/serve.log")"
TW_URL="http://127.0.0.1:$TW_PORT$PATH_UNDER_TEST"
wait_status "$TW_URL" 200 -H "Authorization: Bearer $TOKEN" || {
  curl -s -i -H "Authorization: Bearer $TOKEN" "$TW_URL" >&2 || true
  die "twinward did not proxy a 200 for the sim-runner token: $(cat "$WORK/twinward/serve.log")"
}
# Authentication really is on the path being measured.
code="$(curl -s -o /dev/null -w '%{http_code}' "$TW_URL")"
[ "$code" = 401 ] || die "twinward answered $code without a token (expected 401)"
body="$(curl -s -H "Authorization: Bearer $TOKEN" "$TW_URL")"
[ "$body" = "$(curl -s "$DIRECT_URL")" ] || die "twinward returned a different body than the upstream: $body"
# The upstream gets the twin credential, and never the client's token.
seen="$(curl -s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$TW_PORT/plant-7/__headers")"
grep -qx 'x-twinward-assertion' <<<"$seen" || die "the upstream got no X-Twinward-Assertion; it saw: $seen"
! grep -qx 'authorization' <<<"$seen" || die "the upstream got the client's Authorization header"

# ---------------------------------------------------------------- measurements

# measure NAME URL RATE [-H header...]: sets RPS P50 P99 (µs) from one run. RATE 0 means
# as fast as possible (wrk); any other rate is paced by the PACER.
measure() {
  local name=$1 url=$2 rate=$3 line
  shift 3
  if [ "$rate" != 0 ] && [ "$PACER" = even ]; then
    "$LOAD_BIN" "$url" "$rate" "$DURATION" -c "$CONNECTIONS" -t "$THREADS" "$@" \
      >"$WORK/wrk-$name.txt" 2>&1 || die "bench_load failed for $name: $(cat "$WORK/wrk-$name.txt")"
  else
    WRK_RATE="$rate" WRK_THREADS="$THREADS" \
      wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$LUA" "$@" "$url" \
      >"$WORK/wrk-$name.txt" 2>&1 || die "wrk failed for $name: $(cat "$WORK/wrk-$name.txt")"
  fi
  line="$(grep '^WRK_RESULT ' "$WORK/wrk-$name.txt")" || die "no result for $name: $(cat "$WORK/wrk-$name.txt")"
  # shellcheck disable=SC2034
  read -r _ RPS P50 P99 REQUESTS NON2XX SOCKET_ERRORS <<<"$(sed 's/[a-z0-9_]*=//g' <<<"$line")"
  [ "$NON2XX" = 0 ] || die "$name: $NON2XX responses were not 2xx/3xx (see $WORK/wrk-$name.txt)"
  [ "$SOCKET_ERRORS" = 0 ] || echo "warning: $name: $SOCKET_ERRORS socket errors" >&2
  [ "${REQUESTS:-0}" -gt 0 ] || die "$name: no requests completed"
}

CLK_TCK="$(getconf CLK_TCK)"
# fieldwise A OP B: the space-separated counters A and B combined field by field (OP + or -).
fieldwise() {
  awk -v a="$1" -v op="$2" -v b="$3" 'BEGIN { n = split(a, x, " "); split(b, y, " ");
    for (i = 1; i <= n; i++) printf "%s%.0f", (i > 1 ? " " : ""), (op == "+") ? x[i] + y[i] : x[i] - y[i]; print "" }'
}
# per_request TICKS: clock ticks as µs per request of the last measurement.
per_request() { awk -v t="$1" -v hz="$CLK_TCK" -v n="$REQUESTS" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }'; }
# measure_cpu NAME URL PIDS [wrk args...]: measure at full load; also sets CPU (µs of the
# proxy's own CPU time per request: PIDS are its processes) and AUDIT_CPU (the part of it
# spent by twinward's audit writers).
measure_cpu() {
  local name=$1 url=$2 pids=$3 before after ticks audit_ticks
  shift 3
  # shellcheck disable=SC2086
  before="$(cpu_ticks $pids)"
  measure "$name" "$url" 0 "$@"
  # shellcheck disable=SC2086
  after="$(cpu_ticks $pids)"
  read -r ticks audit_ticks <<<"$(fieldwise "$after" - "$before")"
  CPU="$(per_request "$ticks")"
  AUDIT_CPU="$(per_request "$audit_ticks")"
}

warm() {
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" "$@" >/dev/null 2>&1 || die "warm-up failed for $*"
}

AUTH=(-H "Authorization: Bearer $TOKEN")
ms() { awk -v us="$1" 'BEGIN { printf "%.3f ms", us / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

echo "== $CORES cores; wrk -t$THREADS -c$CONNECTIONS, ${DURATION}s per run; nginx and twinward with $WORKERS workers, upstream with $UPSTREAM_WORKERS"
echo "== warming up"
warm "$DIRECT_URL"
warm "$NGINX_URL"
warm "${AUTH[@]}" "$TW_URL"
[ "$MEASURE_RELAY" = 0 ] || warm "$RELAY_URL"

# The machine's speed drifts between runs (other tenants, CPU frequency, where the scheduler
# puts wrk, the upstream and the proxy: on 2 cores the same target can settle at two
# throughputs 10-15% apart), so each target is measured ROUNDS times, the targets taking
# turns, and the run with the median req/s (full load) or median p99 (paced) is reported
# for each. The ratios and the added p99 that the targets are judged on compare runs of
# the same round, seconds apart, and take the median over the rounds: the ratio of two
# medians can pair one target's fast state with the other's slow one. Both are printed.
median_of() { sort -n -k"$1" | awk '{ line[NR] = $0 } END { print line[int((NR + 1) / 2)] }'; }

# The machine's own state is printed beside the figures: how much time the hypervisor took
# away from the cores over the full-load rounds, and over each target's paced runs how busy
# all cores were (wrk, the upstream and the proxy together) and how much was taken, since
# the paced tail is mostly time spent waiting for a core. From /proc/stat.
# cpu_jiffies: "busy stolen total" summed over all cores so far (guest time is already in
# user time, so the total stops at steal).
cpu_jiffies() {
  awk '/^cpu / { busy = $2 + $3 + $4 + $7 + $8; total = 0; for (i = 2; i <= 9; i++) total += $i; print busy, $9, total }' /proc/stat
}
# cpu_share JIFFIES: "busy% stolen%" of a "busy stolen total" count of jiffies.
cpu_share() {
  awk -v j="$1" 'BEGIN { split(j, x, " "); t = x[3]; if (t <= 0) t = 1;
    printf "%.0f %.1f", 100 * x[1] / t, 100 * x[2] / t }'
}
echo "== full load, $ROUNDS rounds"
FULL_CPU_BEFORE="$(cpu_jiffies)"
A_RUNS="" B_RUNS="" C_RUNS="" D_RUNS="" CA_ROUNDS="" CB_ROUNDS=""
for round in $(seq 1 "$ROUNDS"); do
  measure "direct-$round" "$DIRECT_URL" 0
  A_RUNS+="$RPS $P50 $P99"$'\n'
  a=$RPS
  measure_cpu "nginx-$round" "$NGINX_URL" "$NGINX_PIDS"
  B_RUNS+="$RPS $P50 $P99 $CPU"$'\n'
  b=$RPS
  measure_cpu "twinward-$round" "$TW_URL" "$TW_PID" "${AUTH[@]}"
  C_RUNS+="$RPS $P50 $P99 $CPU $AUDIT_CPU"$'\n'
  CA_ROUNDS+="$(ratio "$RPS" "$a")"$'\n'
  CB_ROUNDS+="$(ratio "$RPS" "$b")"$'\n'
  printf '   round %d: direct %.0f, nginx %.0f, twinward %.0f req/s (c/b %s)' "$round" "$a" "$b" "$RPS" "$(ratio "$RPS" "$b")"
  if [ "$MEASURE_RELAY" = 1 ]; then
    measure_cpu "relay-$round" "$RELAY_URL" "$RELAY_PID"
    D_RUNS+="$RPS $P50 $P99 $CPU"$'\n'
    printf ', relay %.0f req/s' "$RPS"
  fi
  echo
done
FULL_CPU="$(fieldwise "$(cpu_jiffies)" - "$FULL_CPU_BEFORE")"
read -r A_RPS A_P50 A_P99 <<<"$(printf '%s' "$A_RUNS" | median_of 1)"
read -r B_RPS B_P50 B_P99 B_CPU <<<"$(printf '%s' "$B_RUNS" | median_of 1)"
read -r C_RPS C_P50 C_P99 C_CPU C_AUDIT_CPU <<<"$(printf '%s' "$C_RUNS" | median_of 1)"
[ "$MEASURE_RELAY" = 0 ] || read -r D_RPS D_P50 D_P99 D_CPU <<<"$(printf '%s' "$D_RUNS" | median_of 1)"

# And where the threads that serve requests waited: sched_wait PID... prints the
# nanoseconds these processes' threads have spent runnable but without a core so far (the
# second field of /proc/<pid>/task/<tid>/schedstat; 0 where the kernel does not keep it).
# twinward's idle-class audit threads (the background writer, the housekeeping thread) are
# left out: waiting is what they are meant to do, and no request waits for them.
sched_wait() {
  local total=0 task w comm
  for pid in "$@"; do
    for task in /proc/"$pid"/task/*; do
      w=0
      read -r comm 2>/dev/null <"$task/comm" || comm=""
      case "$comm" in twinward-audit | twinward-audith) continue ;; esac
      read -r _ w _ 2>/dev/null <"$task/schedstat" || w=0
      total=$((total + w))
    done
  done
  echo "$total"
}
# paced ACC WAITS "PIDS" NAME URL RATE [wrk args...]: measure, adding the run's
# cpu_jiffies to the variable named ACC, and to the one named WAITS "proxy upstream
# requests": the ns the proxy's processes (PIDS, none for direct) and the upstream waited
# for a core, and the requests completed.
paced() {
  local -n acc=$1 waits=$2
  local pids=$3 before after proxy_wait up_wait
  shift 3
  # shellcheck disable=SC2086
  proxy_wait="$(sched_wait $pids)"
  up_wait="$(sched_wait "$UP_PID")"
  before="$(cpu_jiffies)"
  measure "$@"
  after="$(cpu_jiffies)"
  # shellcheck disable=SC2086
  proxy_wait=$(($(sched_wait $pids) - proxy_wait))
  up_wait=$(($(sched_wait "$UP_PID") - up_wait))
  acc="$(fieldwise "$acc" + "$(fieldwise "$after" - "$before")")"
  waits="$(fieldwise "$waits" + "$proxy_wait $up_wait $REQUESTS")"
}

HALF="$(awk -v r="$C_RPS" 'BEGIN { printf "%d", r / 2 }')"
echo "== paced at $HALF req/s (half of twinward's median maximum), same $CONNECTIONS connections, $ROUNDS rounds"
LA_RUNS="" LB_RUNS="" LC_RUNS="" LD_RUNS="" ADDED_ROUNDS="" NGINX_ADDED_ROUNDS="" RELAY_ADDED_ROUNDS=""
LA_CPU="0 0 0" LB_CPU="0 0 0" LC_CPU="0 0 0" LD_CPU="0 0 0"
LA_WAIT="0 0 0" LB_WAIT="0 0 0" LC_WAIT="0 0 0" LD_WAIT="0 0 0"
for round in $(seq 1 "$ROUNDS"); do
  paced LA_CPU LA_WAIT "" "direct-half-$round" "$DIRECT_URL" "$HALF"
  LA_RUNS+="$RPS $P50 $P99"$'\n'
  paced LB_CPU LB_WAIT "$NGINX_PIDS" "nginx-half-$round" "$NGINX_URL" "$HALF"
  LB_RUNS+="$RPS $P50 $P99"$'\n'
  paced LC_CPU LC_WAIT "$TW_PID" "twinward-half-$round" "$TW_URL" "$HALF" "${AUTH[@]}"
  LC_RUNS+="$RPS $P50 $P99"$'\n'
  # This round's p99s, from the lines just added.
  read -r _ _ a99 <<<"$(printf '%s' "$LA_RUNS" | tail -n 1)"
  read -r _ _ b99 <<<"$(printf '%s' "$LB_RUNS" | tail -n 1)"
  ADDED_ROUNDS+="$((P99 - a99))"$'\n'
  NGINX_ADDED_ROUNDS+="$((b99 - a99))"$'\n'
  if [ "$MEASURE_RELAY" = 1 ]; then
    paced LD_CPU LD_WAIT "$RELAY_PID" "relay-half-$round" "$RELAY_URL" "$HALF"
    LD_RUNS+="$RPS $P50 $P99"$'\n'
    RELAY_ADDED_ROUNDS+="$((P99 - a99))"$'\n'
  fi
done
read -r LA_RPS LA_P50 LA_P99 <<<"$(printf '%s' "$LA_RUNS" | median_of 3)"
read -r LB_RPS LB_P50 LB_P99 <<<"$(printf '%s' "$LB_RUNS" | median_of 3)"
read -r LC_RPS LC_P50 LC_P99 <<<"$(printf '%s' "$LC_RUNS" | median_of 3)"
[ "$MEASURE_RELAY" = 0 ] || read -r LD_RPS LD_P50 LD_P99 <<<"$(printf '%s' "$LD_RUNS" | median_of 3)"

ADDED_P99="$(printf '%s' "$ADDED_ROUNDS" | median_of 1)"
NGINX_ADDED_P99="$(printf '%s' "$NGINX_ADDED_ROUNDS" | median_of 1)"
CA="$(printf '%s' "$CA_ROUNDS" | median_of 1)"
CB="$(printf '%s' "$CB_ROUNDS" | median_of 1)"
verdict() { awk -v x="$1" -v t="$2" -v op="$3" 'BEGIN { ok = (op == ">=") ? (x >= t) : (x <= t); print ok ? "met" : "NOT met" }'; }

echo
printf '%-34s %12s %12s %12s %14s\n' "full load" "req/s" "p50" "p99" "proxy CPU/req"
printf '%-34s %12.0f %12s %12s %14s\n' "(a) direct to upstream" "$A_RPS" "$(ms "$A_P50")" "$(ms "$A_P99")" "-"
printf '%-34s %12.0f %12s %12s %11s µs\n' "(b) nginx reverse proxy" "$B_RPS" "$(ms "$B_P50")" "$(ms "$B_P99")" "$B_CPU"
printf '%-34s %12.0f %12s %12s %11s µs\n' "(c) twinward (token+Cedar+JWT)" "$C_RPS" "$(ms "$C_P50")" "$(ms "$C_P99")" "$C_CPU"
printf '%-34s %12s %12s %12s %11s µs\n' "    of which the audit writer" "" "" "" "$C_AUDIT_CPU"
[ "$MEASURE_RELAY" = 0 ] \
  || printf '%-34s %12.0f %12s %12s %11s µs\n' "(d) TCP relay (haproxy, mode tcp)" "$D_RPS" "$(ms "$D_P50")" "$(ms "$D_P99")" "$D_CPU"
echo "(the audit writer hashes every decision into the chain and appends it to SQLite;"
echo " nginx runs with its access log off, so it writes nothing per request)"
read -r _ FULL_STOLEN <<<"$(cpu_share "$FULL_CPU")"
printf '(over the full-load rounds the hypervisor took %s%% of the cores'"'"' time' "$FULL_STOLEN"
if awk -v s="$FULL_STOLEN" 'BEGIN { exit !(s > 5) }'; then
  printf ': a machine whose\n host is this busy gives figures that compare only within this run)\n'
else
  printf ')\n'
fi
echo
printf 'c/a = %s   c/b = %s   (target c/b >= 0.9: %s)\n' "$CA" "$CB" "$(verdict "$CB" 0.9 ">=")"
printf '(medians over the rounds of each round'"'"'s own ratios; the medians above give c/a = %s, c/b = %s)\n' \
  "$(ratio "$C_RPS" "$A_RPS")" "$(ratio "$C_RPS" "$B_RPS")"
echo
share() { read -r busy stolen <<<"$(cpu_share "$1")"; printf '%3s%% busy, %4s%% stolen' "$busy" "$stolen"; }
# waited WAITS: "proxy upstream" µs per request spent waiting for a core ("-" for no proxy).
waited() {
  awk -v w="$1" 'BEGIN { split(w, x, " "); n = x[3]; if (n <= 0) n = 1;
    printf "%8s %8.1f", (x[1] > 0) ? sprintf("%.1f", x[1] / n / 1000) : "-", x[2] / n / 1000 }'
}
# paced_row LABEL RPS P50 P99 JIFFIES WAITS: one line of the paced table.
paced_row() {
  printf '%-34s %12.0f %12s %12s   %s   %s\n' "$1" "$2" "$(ms "$3")" "$(ms "$4")" "$(share "$5")" "$(waited "$6")"
}
printf '%-34s %12s %12s %12s   %-28s %s\n' "paced at $HALF req/s" "req/s" "p50" "p99" "all $CORES cores" "waited for a core, µs/req (proxy, upstream)"
paced_row "(a) direct to upstream" "$LA_RPS" "$LA_P50" "$LA_P99" "$LA_CPU" "$LA_WAIT"
paced_row "(b) nginx reverse proxy" "$LB_RPS" "$LB_P50" "$LB_P99" "$LB_CPU" "$LB_WAIT"
paced_row "(c) twinward (token+Cedar+JWT)" "$LC_RPS" "$LC_P50" "$LC_P99" "$LC_CPU" "$LC_WAIT"
[ "$MEASURE_RELAY" = 0 ] || paced_row "(d) TCP relay (haproxy, mode tcp)" "$LD_RPS" "$LD_P50" "$LD_P99" "$LD_CPU" "$LD_WAIT"
echo
printf 'added p99 at 50%% load (c - a) = %s   (target <= 1 ms: %s)\n' \
  "$(ms "$ADDED_P99")" "$(verdict "$ADDED_P99" 1000 "<=")"
printf 'nginx adds %s at p99 at the same rate\n' "$(ms "$NGINX_ADDED_P99")"
[ "$MEASURE_RELAY" = 0 ] || printf 'a TCP relay adds %s (the extra hop alone, parsing nothing)\n' \
  "$(ms "$(printf '%s' "$RELAY_ADDED_ROUNDS" | median_of 1)")"
printf '(medians over the rounds of each round'"'"'s own difference; the medians above give %s and %s)\n' \
  "$(ms "$((LC_P99 - LA_P99))")" "$(ms "$((LB_P99 - LA_P99))")"
if [ "$PACER" = even ]; then
  echo "(paced load: examples/bench_load.rs sending $HALF req/s evenly spaced (a wake-up every"
  echo " 100 µs), each latency counted from the request's scheduled time, so a request that waited"
  echo " for a free connection is charged the wait)"
else
  echo "(paced load: stock wrk sending on a fixed schedule of $HALF req/s, see bench/wrk-report.lua:"
  echo " its timers count whole milliseconds, so it sends in bursts of about a millisecond's worth"
  echo " (PACER=even for evenly spaced requests); an achieved rate well below the schedule means"
  echo " it slipped and the tail is under-reported)"
fi
