#!/usr/bin/env bash
# Local services for development and tests: a single-node Apache Kafka broker (KRaft) and a
# PostgreSQL 15 server, both on 127.0.0.1 and both living in the ignored folder .local/.
#
#   scripts/services.sh up      start both (fetches the Kafka jars from Maven Central once)
#   scripts/services.sh down    stop both
#   scripts/services.sh status  say what runs
#   scripts/services.sh purge   stop both and delete their data (the Kafka jars stay cached)
#
# Ports: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), PG_PORT (55432). Idempotent: a service
# that already answers is left alone.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
PG_PORT="${PG_PORT:-55432}"
PG_DB="${PG_DB:-moondev}"
PG_BIN="${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}"

KAFKA_DIR="$LOCAL/kafka"
KAFKA_LIBS="$KAFKA_DIR/libs"
KAFKA_PID="$KAFKA_DIR/kafka.pid"

say() { printf '%s\n' "$*" >&2; }
die() { say "services: $*"; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds name logfile
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    port_open "$1" && return 0
    sleep 0.1
  done
  say "services: $3 did not open port $1 within $2 s; last lines of $4:"
  tail -n 30 "$4" >&2 || true
  return 1
}

# ---------------------------------------------------------------- Kafka
kafka_fetch() {
  [ -f "$KAFKA_LIBS/.complete" ] && return 0
  command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch the Kafka jars from Maven Central"
  command -v java >/dev/null || die "Java 17+ is needed to run the Kafka broker"
  say "services: fetching the Apache Kafka broker jars from Maven Central into $KAFKA_LIBS"
  rm -rf "$KAFKA_LIBS"
  mkdir -p "$KAFKA_LIBS"
  mvn -q -B -Dstyle.color=never -f "$ROOT/scripts/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS" >&2
  touch "$KAFKA_LIBS/.complete"
}

kafka_up() {
  if port_open "$KAFKA_PORT"; then
    say "services: Kafka already answers on 127.0.0.1:$KAFKA_PORT"
    return 0
  fi
  kafka_fetch
  mkdir -p "$KAFKA_DIR/data" "$KAFKA_DIR/logs"
  local conf="$KAFKA_DIR/server.properties"
  cat >"$conf" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
delete.topic.enable=true
log.retention.hours=168
PROPS
  cp "$ROOT/scripts/kafka/log4j.properties" "$KAFKA_DIR/log4j.properties"
  local cp="$KAFKA_LIBS/*"
  local jvm=(java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true
    "-Dlog4j.configuration=file:$KAFKA_DIR/log4j.properties" "-Dkafka.logs.dir=$KAFKA_DIR/logs"
    -cp "$cp")
  if [ ! -f "$KAFKA_DIR/data/meta.properties" ]; then
    "${jvm[@]}" kafka.tools.StorageTool format -t "$(cat /proc/sys/kernel/random/uuid | tr -d - | head -c 22)" \
      -c "$conf" --ignore-formatted >"$KAFKA_DIR/logs/format.log" 2>&1 \
      || { cat "$KAFKA_DIR/logs/format.log" >&2; die "formatting the KRaft storage failed"; }
  fi
  # setsid: the broker outlives this script and is stopped by 'down' through its pid file.
  setsid nohup "${jvm[@]}" kafka.Kafka "$conf" >"$KAFKA_DIR/logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$KAFKA_PID"
  wait_port "$KAFKA_PORT" 60 Kafka "$KAFKA_DIR/logs/stdout.log"
  say "services: Kafka (KRaft) up on 127.0.0.1:$KAFKA_PORT, pid $(cat "$KAFKA_PID")"
}

stop_pid() { # pidfile name
  [ -f "$1" ] || return 0
  local pid i
  pid="$(cat "$1")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    say "services: $2 stopped"
  fi
  rm -f "$1"
}

kafka_down() { stop_pid "$KAFKA_PID" Kafka; }

# ---------------------------------------------------------------- PostgreSQL
# PostgreSQL refuses to run as root. As root the server runs as the 'postgres' system user, which
# must be able to reach its data folder; a fresh clone under a private mktemp folder is not
# reachable, so the data then lives in a private folder of its own under /tmp instead.
pg_user_cmd() {
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root needs the 'postgres' system user (Debian's postgresql package creates it)"
    # from /: the caller's folder may be one the postgres user cannot enter (pg_ctl says so)
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

pg_dir() {
  local d="$LOCAL/pg"
  if [ "$(id -u)" = 0 ]; then
    mkdir -p "$LOCAL"
    if ! runuser -u postgres -- test -x "$LOCAL" 2>/dev/null; then
      d="/tmp/moondev-pg-$(printf '%s' "$ROOT" | md5sum | head -c 12)"
    fi
  fi
  printf '%s' "$d"
}

pg_up() {
  [ -x "$PG_BIN/pg_ctl" ] || die "PostgreSQL server binaries not found (set PG_BIN; Debian: postgresql-15)"
  local dir data log
  dir="$(pg_dir)"
  data="$dir/data"
  log="$dir/postgres.log"
  if port_open "$PG_PORT"; then
    say "services: PostgreSQL already answers on 127.0.0.1:$PG_PORT"
  else
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir" && chmod 700 "$dir"
    if [ ! -f "$data/PG_VERSION" ]; then
      pg_user_cmd "$PG_BIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    fi
    pg_user_cmd "$PG_BIN/pg_ctl" -D "$data" -l "$log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories='' -c fsync=on -c max_connections=200" \
      start >/dev/null || { tail -n 30 "$log" >&2; die "PostgreSQL did not start"; }
    say "services: PostgreSQL up on 127.0.0.1:$PG_PORT (data in $data)"
  fi
  if ! "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "select 1 from pg_database where datname='$PG_DB'" postgres | grep -q 1; then
    "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$PG_DB"
    say "services: created database $PG_DB"
  fi
}

pg_down() {
  local data
  data="$(pg_dir)/data"
  if [ -f "$data/postmaster.pid" ]; then
    pg_user_cmd "$PG_BIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
    say "services: PostgreSQL stopped"
  fi
}

status() {
  port_open "$KAFKA_PORT" && say "Kafka:      up   127.0.0.1:$KAFKA_PORT" || say "Kafka:      down"
  port_open "$PG_PORT" && say "PostgreSQL: up   127.0.0.1:$PG_PORT" || say "PostgreSQL: down"
}

case "${1:-}" in
  up) pg_up; kafka_up ;;
  down) kafka_down; pg_down ;;
  status) status ;;
  purge)
    kafka_down; pg_down
    rm -rf "$KAFKA_DIR/data" "$KAFKA_DIR/logs" "$(pg_dir)"
    say "services: data deleted" ;;
  kafka-up) kafka_up ;;
  kafka-down) kafka_down ;;
  pg-up) pg_up ;;
  pg-down) pg_down ;;
  *) say "usage: $0 up|down|status|purge|kafka-up|kafka-down|pg-up|pg-down"; exit 2 ;;
esac
