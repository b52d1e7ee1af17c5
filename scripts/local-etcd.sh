#!/usr/bin/env bash
# A single-member etcd (Debian's etcd-server) on 127.0.0.1 for development and tests.
#
#   scripts/local-etcd.sh run   PORT DATA_DIR   # foreground (the test fixtures use this)
#   scripts/local-etcd.sh start PORT DATA_DIR   # background, waits until the port answers
#   scripts/local-etcd.sh stop  PORT DATA_DIR
#
# Peers listen on PORT+1. Restarting with the same DATA_DIR keeps the keys.
set -euo pipefail
cmd=${1:?run|start|stop}; port=${2:?port}; dir=${3:?data dir}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
pidfile="$dir/etcd.pid"
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

case "$cmd" in
  run)
    exec etcd --name logship-local --data-dir "$dir/data" \
      --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
      --listen-peer-urls "http://127.0.0.1:$((port + 1))" \
      --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
      --initial-cluster "logship-local=http://127.0.0.1:$((port + 1))" \
      --log-level warn --logger zap
    ;;
  start)
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then exit 0; fi
    nohup "$0" run "$port" "$dir" >"$dir/etcd.log" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 1 60); do
      port_open && { echo "etcd listening on 127.0.0.1:$port (data in $dir)"; exit 0; }
      kill -0 "$(cat "$pidfile")" 2>/dev/null || break
      sleep 0.25
    done
    echo "etcd did not start; see $dir/etcd.log" >&2; exit 1
    ;;
  stop)
    [ -f "$pidfile" ] || exit 0
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    ;;
  *) echo "usage: $0 run|start|stop PORT DATA_DIR" >&2; exit 2 ;;
esac
