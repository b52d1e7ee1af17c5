# Shared by local-etcd.sh and local-kafka.sh: `start` runs the script's own `run` in the
# background with a pid file and waits for the port; `stop` ends it.
# Expects: $0, $port, $dir set, and NAME and WAIT_SECONDS.

usage() { echo "usage: $0 run|start|stop PORT DATA_DIR" >&2; exit 2; }

service_args() {  # the script's own arguments: COMMAND PORT DATA_DIR
  [ $# -eq 3 ] || usage
  case "$1" in run|start|stop) ;; *) usage ;; esac
  [[ "$2" =~ ^[0-9]+$ ]] || usage
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

service_start() {
  local pidfile="$dir/$NAME.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then return 0; fi
  # A session of its own: Ctrl-C in the terminal that ran `make run` goes to the agent's
  # process group, and must not stop the services (etcd would handle the SIGINT).
  setsid "$0" run "$port" "$dir" </dev/null >"$dir/$NAME.out" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 $((WAIT_SECONDS * 4))); do
    port_open && { echo "started $NAME on 127.0.0.1:$port (data in $dir); it keeps running after the agent stops: stop it with '$0 stop $port $dir'"; return 0; }
    kill -0 "$(cat "$pidfile")" 2>/dev/null || break
    sleep 0.25
  done
  echo "$NAME did not start; see $dir/$NAME.out" >&2
  return 1
}

service_stop() {
  local pidfile="$dir/$NAME.pid" pid
  [ -f "$pidfile" ] || { echo "$NAME on 127.0.0.1:$port: not started by make run (no $pidfile)"; return 0; }
  pid=$(cat "$pidfile")
  if ! kill "$pid" 2>/dev/null; then
    echo "$NAME on 127.0.0.1:$port: was not running"
    rm -f "$pidfile"
    return 0
  fi
  for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  echo "$NAME on 127.0.0.1:$port stopped (pid $pid; data kept in $dir)"
}
