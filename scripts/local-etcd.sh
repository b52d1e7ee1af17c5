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
NAME=etcd WAIT_SECONDS=15
. "$(dirname "$0")/service-lib.sh"

case "$cmd" in
  run)
    exec etcd --name logship-local --data-dir "$dir/data" \
      --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
      --listen-peer-urls "http://127.0.0.1:$((port + 1))" \
      --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
      --initial-cluster "logship-local=http://127.0.0.1:$((port + 1))" \
      --log-level warn --logger zap
    ;;
  start) service_start ;;
  stop) service_stop ;;
  *) echo "usage: $0 run|start|stop PORT DATA_DIR" >&2; exit 2 ;;
esac
