#!/usr/bin/env bash
# For `make run`: start a local etcd and Kafka for each endpoint in the config that is on
# this machine and does not answer. Remote endpoints are left alone.
#   scripts/ensure-local-services.sh CONFIG LOCAL_DIR
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 CONFIG LOCAL_DIR" >&2; exit 2; }
config=$1 local_dir=$2
here=$(cd "$(dirname "$0")" && pwd)
py="$here/../.venv/bin/python"

first_endpoint() {  # section field -> host:port of the first entry
  "$py" -c 'import sys, yaml; c = yaml.safe_load(open(sys.argv[1])); print(c[sys.argv[2]][sys.argv[3]][0])' \
    "$config" "$1" "$2"
}
answers() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
is_local() { [[ "$1" == 127.* || "$1" == localhost ]]; }

started=0
ensure() {  # name endpoint script
  local host=${2%:*} port=${2##*:}
  if answers "$host" "$port"; then
    echo "$1 answers on $2"
  elif is_local "$host"; then
    "$here/$3" start "$port" "$local_dir/$1"
    started=1
  else
    echo "$1 at $2 does not answer; the agent will keep retrying" >&2
  fi
}

ensure etcd "$(first_endpoint etcd endpoints)" local-etcd.sh
ensure kafka "$(first_endpoint kafka bootstrap_servers)" local-kafka.sh
if [ "$started" = 1 ]; then
  echo "Ctrl-C stops the agent only; 'make stop-local' stops the local services it started"
fi
