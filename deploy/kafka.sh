#!/usr/bin/env bash
# Local single-node Kafka broker (KRaft) for obsbus development and tests.
#
#   deploy/kafka.sh start|stop|status|bootstrap|logs [tail args]|fetch
#
# The broker is the Maven artifact org.apache.kafka:kafka_2.13 (deploy/kafka/pom.xml), fetched
# once into deploy/kafka/lib/ (git-ignored; Maven caches downloads in ~/.m2) and run with the
# machine's Java 17. Everything else lives under <repo>/var/kafka/ (git-ignored):
# server.properties (written from deploy/kafka/server.properties.in on every start), data/,
# kafka.log, kafka.pid, cluster.id. Listens on 127.0.0.1:${OBSBUS_KAFKA_PORT:-19092}, with its
# controller on ${OBSBUS_KAFKA_CONTROLLER_PORT:-port+1}; no authentication (local use only).
# The process is only ever stopped through its recorded pid. `fetch` only fetches the jars
# (deploy/cluster/cluster.sh runs its three brokers from the same ones).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONF="$ROOT/deploy/kafka"
LIB="$CONF/lib"
BASE="${OBSBUS_KAFKA_DIR:-$ROOT/var/kafka}"
DATA="$BASE/data"
PROPS="$BASE/server.properties"
LOG="$BASE/kafka.log"
PIDFILE="$BASE/kafka.pid"
PORT="${OBSBUS_KAFKA_PORT:-19092}"
CPORT="${OBSBUS_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
TIMEOUT="${OBSBUS_KAFKA_TIMEOUT:-120}" # seconds to become ready, per attempt (2 attempts)
HEAP=(-Xms256m -Xmx768m)               # without limits the JVM takes a quarter of the RAM

die() { echo "kafka.sh: $*" >&2; exit 1; }

# Pid of our broker if it is alive (not a zombie, and really our kafka.Kafka), else fails.
running_pid() {
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    grep -qs '^[0-9]* ([^)]*) [ZX]' "/proc/$pid/stat" && return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -F "kafka.Kafka $PROPS" >/dev/null || return 1
    echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Port the running broker listens on (recorded at start), else the configured one.
current_port() {
    local p=""
    if running_pid >/dev/null; then p="$(cat "$BASE/port" 2>/dev/null || true)"; fi
    echo "${p:-$PORT}"
}

# java >= 17 and mvn; as root, install what is missing with apt-get.
ensure_tools() {
    local missing=() version=0
    command -v mvn >/dev/null 2>&1 || missing+=(maven)
    if command -v java >/dev/null 2>&1; then
        version="$(java -XshowSettings:properties -version 2>&1 |
            sed -n 's/^ *java.specification.version = \([0-9]*\).*/\1/p')"
    fi
    (( ${version:-0} >= 17 )) || missing+=(openjdk-17-jre-headless)
    (( ${#missing[@]} == 0 )) && return 0
    [[ $EUID -eq 0 ]] || die "needs Java 17 and Maven; install as root: apt-get install -y ${missing[*]}"
    echo "kafka.sh: installing ${missing[*]} (apt-get)" >&2
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
    local jdk=(/usr/lib/jvm/java-17-openjdk-*/bin)
    if [[ " ${missing[*]} " == *openjdk-17* && -x "${jdk[0]}/java" ]]; then PATH="${jdk[0]}:$PATH"; fi
}

# deploy/kafka/lib/ holds the broker's jars once; refetched only when pom.xml changes.
fetch_jars() {
    local sum
    sum="$(sha256sum "$CONF/pom.xml" | cut -d' ' -f1)"
    [[ "$(cat "$LIB/.pom.sha256" 2>/dev/null || true)" == "$sum" ]] && return 0
    echo "kafka.sh: fetching the broker's jars with Maven (once)" >&2
    rm -rf "$LIB.tmp"
    if ! mvn -B -q -f "$CONF/pom.xml" dependency:copy-dependencies -DoutputDirectory="$LIB.tmp" \
        >"$BASE/mvn.log" 2>&1; then
        tail -n 30 "$BASE/mvn.log" >&2
        die "mvn could not fetch the broker's jars (is Maven Central reachable? log: $BASE/mvn.log)"
    fi
    echo "$sum" >"$LIB.tmp/.pom.sha256"
    rm -rf "$LIB"
    mv "$LIB.tmp" "$LIB"
}

# Kafka's command-line tools (StorageTool), their own logging on stderr.
java_tool() {
    java -Xmx256m -Dlog4j2.configurationFile="$CONF/log4j2.properties" \
        -Dobsbus.kafka.log.target=SYSTEM_ERR -cp "$LIB/*" "$@"
}

# Ports. Without OBSBUS_KAFKA_PORT, a taken default (e.g. another clone's broker still running
# on this machine) moves this broker to the next free pair: `bootstrap` tells where it is.
# The controller port is part of the formatted storage, so it is fixed from then on.
choose_ports() {
    local fixed="" p
    if [[ -f "$BASE/controller.port" ]]; then CPORT="$(cat "$BASE/controller.port")"; fixed=1; fi
    [[ -n "${OBSBUS_KAFKA_CONTROLLER_PORT:-}" ]] && fixed=1
    if [[ -n "$fixed" ]] && port_open "$CPORT"; then
        die "controller port $CPORT is taken by another program (stop it, or \`make clean-kafka\`)"
    fi
    for ((p = PORT; p <= PORT + 40; p += 2)); do
        if ! port_open "$p" && { [[ -n "$fixed" ]] || ! port_open "$((p + 1))"; }; then
            [[ "$p" == "$PORT" ]] || echo "kafka.sh: port $PORT is taken (another broker?); using $p" >&2
            PORT="$p"
            [[ -n "$fixed" ]] || CPORT="$((p + 1))"
            return 0
        fi
        [[ -z "${OBSBUS_KAFKA_PORT:-}" ]] ||
            die "port $PORT or $((PORT + 1)) is taken; choose another OBSBUS_KAFKA_PORT"
    done
    die "ports $PORT..$((PORT + 41)) are all taken; choose OBSBUS_KAFKA_PORT"
}

# server.properties from the template; storage formatted once with a cluster id kept in cluster.id.
configure() {
    mkdir -p "$DATA"
    sed -e "s|@PORT@|$PORT|g" -e "s|@CONTROLLER_PORT@|$CPORT|g" -e "s|@DATA_DIR@|$DATA|g" \
        "$CONF/server.properties.in" >"$PROPS"
    [[ -f "$DATA/meta.properties" ]] && return 0
    if [[ ! -s "$BASE/cluster.id" ]]; then
        java_tool kafka.tools.StorageTool random-uuid 2>>"$LOG" |
            grep -E '^[A-Za-z0-9_-]{22}$' >"$BASE/cluster.id.tmp" || die "no cluster id (log: $LOG)"
        mv "$BASE/cluster.id.tmp" "$BASE/cluster.id"
    fi
    java_tool kafka.tools.StorageTool format --standalone --ignore-formatted \
        -t "$(cat "$BASE/cluster.id")" -c "$PROPS" >>"$LOG" 2>&1 ||
        die "formatting $DATA failed (log: $LOG)"
    echo "$CPORT" >"$BASE/controller.port"
}

# Ready = the port accepts connections and (for a fresh start: the log from byte $2 on) the
# server logged that it started. The port alone is bound before requests are served.
wait_ready() {
    local pid="$1" from="${2:-}" i
    for ((i = 0; i < TIMEOUT; i++)); do
        [[ -d "/proc/$pid" ]] || { echo "kafka.sh: broker exited" >&2; return 1; }
        if port_open "$PORT" && { [[ -z "$from" ]] ||
            tail -c +"$((from + 1))" "$LOG" | grep "Kafka Server started" >/dev/null; }; then
            return 0
        fi
        sleep 1
    done
    echo "kafka.sh: not ready after ${TIMEOUT}s" >&2
    return 1
}

# TERM, wait up to 60 s for the controlled shutdown, then KILL.
stop_pid() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 60; i++)); do
        [[ -d "/proc/$pid" ]] || break
        grep -qs '^[0-9]* ([^)]*) [ZX]' "/proc/$pid/stat" && break
        sleep 1
    done
    if [[ -d "/proc/$pid" ]]; then
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 10; i++)); do [[ -d "/proc/$pid" ]] && sleep 1; done
    fi
    rm -f "$PIDFILE"
}

cmd_start() {
    mkdir -p "$BASE"
    exec 9>"$BASE/lock" # one start at a time per clone
    flock 9
    local pid attempt from
    if pid="$(running_pid)"; then
        PORT="$(current_port)"
        wait_ready "$pid" || die "broker (pid $pid) is running but not ready (log: $LOG)"
        echo "kafka.sh: already running at 127.0.0.1:$PORT (pid $pid)"
        return 0
    fi
    choose_ports
    ensure_tools
    fetch_jars
    configure
    # Keep one older log once it grows past 50 MB.
    if (($(stat -c %s "$LOG" 2>/dev/null || echo 0) > 50000000)); then mv "$LOG" "$LOG.1"; fi
    touch "$LOG"
    # A loaded 2-core machine can be slow to start the JVM: one retry.
    for attempt in 1 2; do
        echo "=== kafka.sh start (attempt $attempt) $(date -Is)" >>"$LOG"
        from="$(stat -c %s "$LOG")"
        # Own session, no terminal, lock fd closed: the broker outlives this script and make.
        setsid java "${HEAP[@]}" -XX:+UseG1GC -Djava.awt.headless=true \
            -Dlog4j2.configurationFile="$CONF/log4j2.properties" \
            -cp "$LIB/*" kafka.Kafka "$PROPS" </dev/null >>"$LOG" 2>&1 9>&- &
        pid=$!
        echo "$pid" >"$PIDFILE"
        echo "$PORT" >"$BASE/port"
        if wait_ready "$pid" "$from"; then
            echo "kafka.sh: ready at 127.0.0.1:$PORT (pid $pid, log: $LOG)"
            return 0
        fi
        stop_pid "$pid"
    done
    tail -n 30 "$LOG" >&2 || true
    die "broker did not start (log: $LOG)"
}

cmd_stop() {
    local pid
    if pid="$(running_pid)"; then
        stop_pid "$pid"
        echo "kafka.sh: stopped (pid $pid)"
    else
        rm -f "$PIDFILE"
        echo "kafka.sh: not running"
    fi
}

cmd_status() {
    local pid
    if pid="$(running_pid)"; then
        echo "kafka.sh: running at 127.0.0.1:$(current_port) (pid $pid, data: $DATA)"
    else
        echo "kafka.sh: not running"
        return 1
    fi
}

cmd_logs() {
    shift
    [[ -f "$LOG" ]] || die "no log yet ($LOG)"
    tail -n 100 "$@" "$LOG"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    bootstrap) echo "127.0.0.1:$(current_port)" ;;
    logs) cmd_logs "$@" ;;
    fetch) mkdir -p "$BASE" && exec 9>"$BASE/lock" && flock 9 && ensure_tools && fetch_jars ;;
    *) echo "usage: $0 start|stop|status|bootstrap|logs [tail args]|fetch" >&2; exit 2 ;;
esac
