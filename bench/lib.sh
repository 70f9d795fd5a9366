# Helpers the bench scripts share; source it after defining `die MESSAGE`.

# Listening ports come from below the ephemeral range, so that no client socket (wrk's, the
# proxies' upstream connections, anything else on the machine) can hold one by chance.
EPHEMERAL_LOW="$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
PORT_LOW=10000
[ "$EPHEMERAL_LOW" -gt $((PORT_LOW + 1000)) ] || PORT_LOW=$((EPHEMERAL_LOW / 2))
USED_PORTS=" "

# free_port VAR: sets VAR to a port nothing listens on that no earlier call handed out. It
# assigns rather than prints: a `$(...)` would run it in a subshell and forget the ports it
# handed out, so two services started later could be given the same one.
free_port() {
  local -n free_port_var=$1
  local candidate
  for _ in $(seq 1 200); do
    candidate=$((PORT_LOW + RANDOM % (EPHEMERAL_LOW - PORT_LOW)))
    case "$USED_PORTS" in *" $candidate "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
      USED_PORTS="$USED_PORTS$candidate "
      free_port_var=$candidate
      return
    fi
  done
  die "no free port found"
}

# wait_status URL STATUS [curl args...]: until URL answers STATUS (10 s at most).
wait_status() {
  local url=$1 want=$2 got=""
  shift 2
  for _ in $(seq 1 200); do
    got="$(curl -s -o /dev/null -w '%{http_code}' "$@" "$url" || true)"
    [ "$got" = "$want" ] && return 0
    sleep 0.05
  done
  return 1
}

# gateway_dir DIR PORT ADMIN_PORT UPSTREAM_PORT WORKERS: a twinward data directory with a copy
# of the shipped policies and a twinward.toml serving the bench route. plant-7 (sensitivity
# 2, environment "twin") is in the shipped entities; policy "sim-runners-sandbox" lets a
# service account with role sim-runner read it.
gateway_dir() {
  local dir=$1 port=$2 admin=$3 upstream=$4 workers=$5
  mkdir -p "$dir"
  cp -R "$REPO/policies" "$dir/policies"
  cat >"$dir/twinward.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin"
workers = $workers

[storage]
url = "sqlite://$dir/twinward.db"

[credentials]
keys_dir = "$dir/keys"

[policy]
dir = "$dir/policies"

[log]
level = "warn"

[[routes]]
name = "plant-7"
path_prefix = "/plant-7"
upstream = "http://127.0.0.1:$upstream"
twin = "plant-7"
attributes = { environment = "twin", site = "plant-7", sensitivity = 2 }
TOML
}

# cpu_ticks PID...: "all audit": user + system clock ticks used so far by these processes,
# all threads, and by those of their threads that are twinward's audit threads.
cpu_ticks() {
  local total=0 audit=0 task ticks comm
  for pid in "$@"; do
    for task in /proc/"$pid"/task/*; do
      # Fields 14 and 15, counted after the command name (which holds no spaces here).
      ticks="$(awk '{ print $14 + $15 }' "$task/stat" 2>/dev/null || echo 0)"
      total=$((total + ticks))
      read -r comm 2>/dev/null <"$task/comm" || comm=""
      case "$comm" in twinward-audit*) audit=$((audit + ticks)) ;; esac
    done
  done
  echo "$total $audit"
}
