#!/usr/bin/env bash
# A single-member etcd (Debian's etcd-server) on 127.0.0.1 for development and tests.
#
#   scripts/local-etcd.sh run   PORT DATA_DIR   # foreground (the test fixtures use this)
#   scripts/local-etcd.sh start PORT DATA_DIR   # background, waits until the port answers
#   scripts/local-etcd.sh stop  PORT DATA_DIR
#
# Peers listen on PORT+1. Restarting with the same DATA_DIR keeps the keys. History older
# than 10 minutes is compacted, as a fleet's etcd needs (docs/operating.md, sizing etcd).
# Optional, for a cluster: LOCAL_ETCD_NAME (this member's name) and LOCAL_ETCD_CLUSTER (every
# member's name=http://127.0.0.1:PEER_PORT, comma-separated).
# Optional, for the security tests: ETCD_CERT and ETCD_KEY serve clients over TLS
# (https); ETCD_CLIENT_CA also requires a client certificate signed by that CA.
set -euo pipefail
. "$(dirname "$0")/service-lib.sh"
service_args "$@"
cmd=$1 port=$2 dir=$3
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
NAME=etcd WAIT_SECONDS=15

case "$cmd" in
  run)
    scheme=http tls=()
    if [ -n "${ETCD_CERT:-}" ]; then
      scheme=https tls=(--cert-file "$ETCD_CERT" --key-file "$ETCD_KEY")
      if [ -n "${ETCD_CLIENT_CA:-}" ]; then
        tls+=(--trusted-ca-file "$ETCD_CLIENT_CA" --client-cert-auth)
      fi
    fi
    name=${LOCAL_ETCD_NAME:-logship-local}
    exec etcd --name "$name" --data-dir "$dir/data" "${tls[@]}" \
      --listen-client-urls "$scheme://127.0.0.1:$port" --advertise-client-urls "$scheme://127.0.0.1:$port" \
      --listen-peer-urls "http://127.0.0.1:$((port + 1))" \
      --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
      --initial-cluster "${LOCAL_ETCD_CLUSTER:-$name=http://127.0.0.1:$((port + 1))}" \
      --auto-compaction-mode periodic --auto-compaction-retention 10m \
      --log-level warn --logger zap
    ;;
  start) service_start ;;
  stop) service_stop ;;
  *) usage ;;
esac
