#!/usr/bin/env bash
# A 3-broker Kafka (KRaft) cluster on 127.0.0.1 for testing obsbus with replication.
#
#   deploy/cluster/cluster.sh start|stop|status|bootstrap
#   deploy/cluster/cluster.sh start-broker N|stop-broker N|kill N|logs N [tail args]
#
# Each broker (N = 1, 2, 3) is one JVM, broker and controller; the three controllers form a
# static quorum. Every topic has 3 replicas and min.insync.replicas=2: a write survives losing
# one broker and is refused (not lost) after losing two. The jars are the single-node broker's
# (deploy/kafka/lib/, fetched by `deploy/kafka.sh fetch`). Everything else lives under
# ${OBSBUS_CLUSTER_DIR:-<repo>/var/kafka-cluster} (git-ignored): cluster.id, ports, and per
# broker broker-N/ with server.properties (written from deploy/cluster/server.properties.in on
# every start), data/, kafka.log and kafka.pid. Broker N listens on
# 127.0.0.1:${OBSBUS_CLUSTER_PORT:-19192} + (N-1) * ${OBSBUS_CLUSTER_PORT_STEP:-100}, its
# controller on that port + 1; the ports are kept in <dir>/ports once the storage is formatted.
# A broker is only ever stopped through its recorded pid.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/deploy/cluster"
CONF="$ROOT/deploy/kafka"
LIB="$CONF/lib"
BASE="${OBSBUS_CLUSTER_DIR:-$ROOT/var/kafka-cluster}"
PORT="${OBSBUS_CLUSTER_PORT:-19192}"
STEP="${OBSBUS_CLUSTER_PORT_STEP:-100}"
TIMEOUT="${OBSBUS_CLUSTER_TIMEOUT:-120}" # seconds to become ready, per attempt (2 attempts)
GRACE="${OBSBUS_CLUSTER_STOP_GRACE:-60}" # seconds for a controlled shutdown before KILL
HEAP=(-Xms256m -Xmx512m)                 # three JVMs: without limits each takes 1/4 of RAM
NODES=(1 2 3)

die() { echo "cluster.sh: $*" >&2; exit 1; }

dir() { echo "$BASE/broker-$1"; }
client_port() { echo "$((PORT + ($1 - 1) * STEP))"; }
controller_port() { echo "$(($(client_port "$1") + 1))"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
gone() { [[ ! -d "/proc/$1" ]] || grep -qs '^[0-9]* ([^)]*) [ZX]' "/proc/$1/stat"; }

node() {
    [[ "${1:-}" =~ ^[123]$ ]] || die "which broker? expected 1, 2 or 3, got '${1:-}'"
    echo "$1"
}

# Pid of broker N if it is alive (not a zombie, and really our kafka.Kafka), else fails.
running_pid() {
    local pid
    pid="$(cat "$(dir "$1")/kafka.pid" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] && ! gone "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
        grep -F "kafka.Kafka $(dir "$1")/server.properties" >/dev/null || return 1
    echo "$pid"
}

# The ports are part of the formatted storage (the quorum's voters): once recorded in
# <dir>/ports they are fixed. Before that, without OBSBUS_CLUSTER_PORT, taken default ports
# (another clone's cluster?) move the cluster to the next free set; `bootstrap` tells where.
choose_ports() {
    local recorded n p free
    if [[ -s "$BASE/ports" ]]; then
        read -r recorded STEP <"$BASE/ports"
        if [[ -n "${OBSBUS_CLUSTER_PORT:-}" && "$OBSBUS_CLUSTER_PORT" != "$recorded" ]]; then
            die "the cluster in $BASE was formatted with port $recorded; \`$0 stop\` and rm -rf it to change"
        fi
        PORT="$recorded"
        return 0
    fi
    for ((p = PORT; p <= PORT + 40; p += 2)); do
        free=1
        for n in "${NODES[@]}"; do
            PORT="$p"
            if port_open "$(client_port "$n")" || port_open "$(controller_port "$n")"; then free=""; fi
        done
        if [[ -n "$free" ]]; then
            [[ "$p" == "${OBSBUS_CLUSTER_PORT:-19192}" ]] ||
                echo "cluster.sh: default ports are taken (another cluster?); using base $p" >&2
            return 0
        fi
        [[ -z "${OBSBUS_CLUSTER_PORT:-}" ]] ||
            die "a port of $PORT (step $STEP) is taken; choose another OBSBUS_CLUSTER_PORT"
    done
    die "no free set of ports from ${OBSBUS_CLUSTER_PORT:-19192}; choose OBSBUS_CLUSTER_PORT"
}

# Read the recorded ports, if any, for the commands that start nothing.
known_ports() { if [[ -s "$BASE/ports" ]]; then read -r PORT STEP <"$BASE/ports"; fi; }

# Each broker's server.properties from the template; the storage formatted once, with one
# cluster id (kept in cluster.id) for the three.
configure() {
    local n voters=""
    for n in "${NODES[@]}"; do voters+="${voters:+,}$n@127.0.0.1:$(controller_port "$n")"; done
    for n in "${NODES[@]}"; do
        mkdir -p "$(dir "$n")/data"
        sed -e "s|@NODE_ID@|$n|g" -e "s|@PORT@|$(client_port "$n")|g" \
            -e "s|@CONTROLLER_PORT@|$(controller_port "$n")|g" -e "s|@VOTERS@|$voters|g" \
            -e "s|@DATA_DIR@|$(dir "$n")/data|g" "$HERE/server.properties.in" \
            >"$(dir "$n")/server.properties"
    done
    if [[ ! -s "$BASE/cluster.id" ]]; then
        java_tool kafka.tools.StorageTool random-uuid 2>>"$BASE/format.log" |
            grep -E '^[A-Za-z0-9_-]{22}$' >"$BASE/cluster.id.tmp" ||
            die "no cluster id (log: $BASE/format.log)"
        mv "$BASE/cluster.id.tmp" "$BASE/cluster.id"
    fi
    for n in "${NODES[@]}"; do
        [[ -f "$(dir "$n")/data/meta.properties" ]] && continue
        java_tool kafka.tools.StorageTool format --ignore-formatted -t "$(cat "$BASE/cluster.id")" \
            -c "$(dir "$n")/server.properties" >>"$BASE/format.log" 2>&1 ||
            die "formatting broker $n failed (log: $BASE/format.log)"
    done
    echo "$PORT $STEP" >"$BASE/ports"
}

java_tool() {
    java -Xmx256m -Dlog4j2.configurationFile="$CONF/log4j2.properties" \
        -Dobsbus.kafka.log.target=SYSTEM_ERR -cp "$LIB/*" "$@"
}

declare -A FROM # broker -> size of its log when it was launched

launch() {
    local n="$1" log pid
    log="$(dir "$n")/kafka.log"
    if (($(stat -c %s "$log" 2>/dev/null || echo 0) > 50000000)); then mv "$log" "$log.1"; fi
    echo "=== cluster.sh start broker $n $(date -Is)" >>"$log"
    FROM[$n]="$(stat -c %s "$log")"
    # Own session, no terminal, lock fd closed: the broker outlives this script.
    setsid java "${HEAP[@]}" -XX:+UseG1GC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$CONF/log4j2.properties" \
        -cp "$LIB/*" kafka.Kafka "$(dir "$n")/server.properties" </dev/null >>"$log" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$(dir "$n")/kafka.pid"
}

# Ready = the client port accepts connections and the log (since launch) says the server
# started: the port is bound before requests are served. Prints the brokers not ready in time.
wait_ready() {
    local pending=("$@") left n i pid
    for ((i = 0; i < TIMEOUT && ${#pending[@]} > 0; i++)); do
        left=()
        for n in "${pending[@]}"; do
            pid="$(cat "$(dir "$n")/kafka.pid")"
            if gone "$pid"; then
                echo "cluster.sh: broker $n exited (log: $(dir "$n")/kafka.log)" >&2
                echo "$n"
            elif ! port_open "$(client_port "$n")" || ! tail -c +"$((FROM[$n] + 1))" \
                "$(dir "$n")/kafka.log" | grep "Kafka Server started" >/dev/null; then
                left+=("$n")
            fi
        done
        pending=("${left[@]}")
        ((${#pending[@]} == 0)) || sleep 1
    done
    for n in "${pending[@]}"; do
        echo "cluster.sh: broker $n not ready after ${TIMEOUT}s" >&2
        echo "$n"
    done
}

# Wait up to $1 s for the pids after it to be gone; fails if one is still there.
wait_gone() {
    local seconds="$1" pid i alive
    shift
    for ((i = 0; ; i++)); do
        alive=""
        for pid in "$@"; do gone "$pid" || alive=1; done
        [[ -n "$alive" ]] || return 0
        ((i < seconds)) || return 1
        sleep 1
    done
}

# TERM the given pids together, wait up to GRACE s for their controlled shutdown, then KILL.
stop_pids() {
    local pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait_gone "$GRACE" "$@" && return 0
    for pid in "$@"; do
        gone "$pid" && continue
        echo "cluster.sh: pid $pid did not stop within ${GRACE}s (no controller quorum?): KILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait_gone 10 "$@" || true
}

lock() {
    mkdir -p "$BASE"
    exec 9>"$BASE/lock" # one command at a time per cluster directory
    flock 9
}

# Start the given brokers (those not running), one retry each; all of them ready or fail.
start_brokers() {
    local n launched=() failed=() attempt
    lock
    choose_ports
    bash "$ROOT/deploy/kafka.sh" fetch
    configure
    for n in "$@"; do
        if running_pid "$n" >/dev/null; then continue; fi
        launch "$n"
        launched+=("$n")
    done
    for attempt in 1 2; do
        ((${#launched[@]} > 0)) || break
        mapfile -t failed < <(wait_ready "${launched[@]}")
        ((${#failed[@]} > 0)) || break
        launched=()
        for n in "${failed[@]}"; do
            stop_pids "$(cat "$(dir "$n")/kafka.pid")"
            rm -f "$(dir "$n")/kafka.pid"
            if ((attempt == 1)); then launch "$n" && launched+=("$n"); fi
        done
    done
    if ((${#failed[@]} > 0)); then
        for n in "${failed[@]}"; do tail -n 20 "$(dir "$n")/kafka.log" >&2 || true; done
        die "broker(s) ${failed[*]} did not start; alone, a broker waits for a second" \
            "one (the controllers' quorum is two of three)"
    fi
    for n in "$@"; do
        echo "cluster.sh: broker $n ready at 127.0.0.1:$(client_port "$n") (pid $(running_pid "$n"))"
    done
}

# Stop the given brokers by their recorded pids: together, controlled (TERM), or KILL.
stop_brokers() {
    local signal="$1" n pid pids=()
    shift
    lock
    known_ports
    for n in "$@"; do
        if pid="$(running_pid "$n")"; then pids+=("$pid"); else rm -f "$(dir "$n")/kafka.pid"; fi
    done
    if ((${#pids[@]} > 0)); then
        if [[ "$signal" == KILL ]]; then
            kill -KILL "${pids[@]}" 2>/dev/null || true
            wait_gone 10 "${pids[@]}" || die "pid(s) ${pids[*]} still there 10 s after KILL"
        else
            stop_pids "${pids[@]}"
        fi
    fi
    for n in "$@"; do
        if pid="$(cat "$(dir "$n")/kafka.pid" 2>/dev/null)" && [[ -n "$pid" ]] && gone "$pid"; then
            rm -f "$(dir "$n")/kafka.pid"
            echo "cluster.sh: broker $n stopped (pid $pid$([[ $signal == KILL ]] && echo ", killed"))"
        elif ! running_pid "$n" >/dev/null; then
            echo "cluster.sh: broker $n not running"
        fi
    done
}

cmd_status() {
    local n pid all=0
    known_ports
    for n in "${NODES[@]}"; do
        if pid="$(running_pid "$n")"; then
            echo "broker $n: running at 127.0.0.1:$(client_port "$n") (pid $pid)"
        else
            echo "broker $n: not running"
            all=1
        fi
    done
    return "$all"
}

cmd_bootstrap() {
    local n out=""
    known_ports
    for n in "${NODES[@]}"; do out+="${out:+,}127.0.0.1:$(client_port "$n")"; done
    echo "$out"
}

cmd_logs() {
    local n log
    n="$(node "${2:-}")"
    log="$(dir "$n")/kafka.log"
    [[ -f "$log" ]] || die "no log yet ($log)"
    tail -n 100 "${@:3}" "$log"
}

case "${1:-}" in
    start) start_brokers "${NODES[@]}" ;;
    stop) stop_brokers TERM "${NODES[@]}" ;;
    status) cmd_status ;;
    bootstrap) cmd_bootstrap ;;
    start-broker) n="$(node "${2:-}")" && start_brokers "$n" ;;
    stop-broker) n="$(node "${2:-}")" && stop_brokers TERM "$n" ;;
    kill) n="$(node "${2:-}")" && stop_brokers KILL "$n" ;;
    logs) cmd_logs "$@" ;;
    *)
        echo "usage: $0 start|stop|status|bootstrap|start-broker N|stop-broker N|kill N|logs N" >&2
        exit 2
        ;;
esac
