#!/usr/bin/env bash
# A single-node Apache Kafka (KRaft) on 127.0.0.1 for development and tests.
#
#   scripts/local-kafka.sh run   PORT DATA_DIR   # foreground (the test fixtures use this)
#   scripts/local-kafka.sh start PORT DATA_DIR   # background, waits until the port answers
#   scripts/local-kafka.sh stop  PORT DATA_DIR
#
# The broker's controller listens on PORT+1. Restarting with the same DATA_DIR keeps the
# topics and records. Jars come from .cache/kafka-libs (`make setup` fetches them).
# Optional, for the security tests: KAFKA_EXTRA_PROPERTIES names a file appended to the
# broker's properties (later keys win: listeners, TLS, SASL); KAFKA_SCRAM holds SCRAM
# credentials, separated by spaces, created when the storage is formatted
# ('SCRAM-SHA-512=[name=u,password=p] SCRAM-SHA-512=[name=v,password=q]').
# Optional, for a cluster of nodes that are each broker and controller: KAFKA_NODE_ID,
# KAFKA_VOTERS (every node's id@127.0.0.1:CONTROLLER_PORT, comma-separated), the same
# KAFKA_CLUSTER_ID on every node, and KAFKA_REPLICATION: the replication factor of new
# topics, of the consumer offsets and of the transaction log; above 1, their
# min.insync.replicas is 2.
set -euo pipefail
. "$(dirname "$0")/service-lib.sh"
service_args "$@"
cmd=$1 port=$2 dir=$3
root=$(cd "$(dirname "$0")/.." && pwd)
libs="$root/.cache/kafka-libs"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
NAME=kafka WAIT_SECONDS=60

node_id=${KAFKA_NODE_ID:-1}
voters=${KAFKA_VOTERS:-$node_id@127.0.0.1:$((port + 1))}
replication=${KAFKA_REPLICATION:-1}
min_isr=$(( replication > 1 ? 2 : 1 ))

write_config() {
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=$node_id
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$((port + 1))
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=3
auto.create.topics.enable=true
default.replication.factor=$replication
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$replication
transaction.state.log.replication.factor=$replication
transaction.state.log.min.isr=$min_isr
group.initial.rebalance.delay.ms=0
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
PROPS
  if [ -n "${KAFKA_EXTRA_PROPERTIES:-}" ]; then cat "$KAFKA_EXTRA_PROPERTIES" >> "$dir/server.properties"; fi
  cat > "$dir/log4j.properties" <<PROPS
log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$dir/kafka.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
PROPS
}

java_cmd=(java -Xms256m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true
  "-Dlog4j.configuration=file:$dir/log4j.properties" -cp "$libs/*")

format_storage() {
  [ -f "$dir/data/meta.properties" ] && return 0
  local id scram=()
  for credential in ${KAFKA_SCRAM:-}; do scram+=(--add-scram "$credential"); done
  # A cluster id that starts with "-" would be read as an option: draw again.
  id=${KAFKA_CLUSTER_ID:-$(python3 -c 'import base64, uuid
while (i := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"): pass
print(i)')}
  "${java_cmd[@]}" kafka.tools.StorageTool format -t "$id" -c "$dir/server.properties" \
    "${scram[@]}" >"$dir/format.log" 2>&1
}


case "$cmd" in
  run)
    [ -d "$libs" ] || { echo "no Kafka jars in $libs: run 'make setup'" >&2; exit 1; }
    write_config; format_storage
    exec "${java_cmd[@]}" kafka.Kafka "$dir/server.properties"
    ;;
  start) service_start ;;
  stop) service_stop ;;
  *) usage ;;
esac
