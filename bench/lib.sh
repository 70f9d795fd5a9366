# Helpers the bench scripts share; source it after defining `die MESSAGE`.

# work_dir NAME: sets WORK, a new temporary directory for the run's files, and PIDS, to which
# the caller adds the processes it starts. At exit those are stopped, and WORK is removed,
# or kept and named when the run failed or KEEP=1.
work_dir() {
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/twinward-$1.XXXXXX")"
  PIDS=()
  trap stop_and_clean EXIT
  trap 'exit 130' INT TERM
}

stop_and_clean() {
  local status=$?
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "${KEEP:-0}" = 1 ] || [ "$status" -ne 0 ]; then
    echo "bench/$(basename "$0"): configs, logs and wrk output kept in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}

# target_dir: sets TARGET, cargo's target directory as an absolute path.
target_dir() {
  TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
  case "$TARGET" in /*) ;; *) TARGET="$REPO/$TARGET" ;; esac
}

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

# start_nginx DIR PORT UPSTREAM_PORT WORKERS: nginx as a plain reverse proxy on PORT in front
# of the upstream, with its files in DIR; adds the master to the caller's PIDS (stopped at
# exit) and sets NGINX_PID (the master) and NGINX_PIDS (the master and its workers, which
# exist once it answers: for CPU and waits) once it answers 200.
start_nginx() {
  local dir=$1 port=$2 upstream=$3 workers=$4
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<NGINX
daemon off;
master_process on;
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
  worker_connections 4096;
}
http {
  access_log off;
  client_body_temp_path $dir/client_body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  # Connections are kept for good on both sides, as twinward keeps them: nginx's default
  # of closing each after 1000 requests makes a client reconnect mid-run, which shows
  # in a paced tail (a p99 of 3-16 ms instead of 1.0-1.4 at 20k req/s on one machine).
  keepalive_requests 1000000;
  upstream twin {
    server 127.0.0.1:$upstream;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://twin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX
  # nginx reads sockets to inherit from a variable NGINX; whatever the caller has there is not that.
  env -u NGINX nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -t -q \
    || die "nginx rejected its config: $(cat "$dir/error.log")"
  env -u NGINX nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  wait_status "http://127.0.0.1:$port/plant-7/state" 200 \
    || die "nginx did not answer 200 on port $port: $(cat "$dir/error.log")"
  NGINX_PIDS="$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')"
}
