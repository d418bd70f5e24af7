#!/usr/bin/env bash
# The peers `cairn-bench compare` measures Cairn against: install them, start
# one on 127.0.0.1 with a fresh data directory and durable settings, stop it by
# its PID.
#
#   bench/peers.sh install [--wait]      install the missing peers (UmaDB builds in
#                                        the background; --wait waits for it)
#   bench/peers.sh check NAME            exit 0 if NAME can be started here
#   bench/peers.sh start NAME DIR PORT   start NAME on a fresh DIR, wait until ready
#   bench/peers.sh stop NAME             stop NAME (started by `start`) by its PID
#
# NAME is postgres, redis, nats or umadb. DIR must not exist or be empty and
# must be on the disk to measure (not /tmp: on tmpfs fsync costs nothing).
# The PID and the data directory of a started peer are kept in
# $CAIRN_PEERS_STATE (default /work/benchdata/peers-state), one NAME.pid and
# NAME.dir each, so `stop` needs only the name.
#
# Durable settings (acknowledged only after fsync, where the store can):
#   postgres  synchronous_commit=on, fsync=on, wal_sync_method=fdatasync
#   redis     appendonly yes, appendfsync always, no RDB snapshots
#   nats      JetStream file store (NATS 2.9 never fsyncs per message: NOT durable)
#   umadb     its own default (fsync per commit, group commit)
set -euo pipefail

STATE=${CAIRN_PEERS_STATE:-/work/benchdata/peers-state}
UMADB_TARGET=${UMADB_TARGET:-$HOME/.cache/cairn/umadb-target}
UMADB_LOG=${UMADB_LOG:-$HOME/.cache/cairn/umadb-install.log}

die() {
    echo "peers.sh: $*" >&2
    exit 1
}

pg_bin() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [[ -n $bin && -x $bin/initdb && -x $bin/pg_ctl ]] || return 1
    echo "$bin"
}

umadb_bin() {
    local bin
    for bin in "$HOME/.cargo/bin/umadb" "$(command -v umadb 2>/dev/null || true)"; do
        [[ -n $bin && -x $bin ]] && { echo "$bin"; return 0; }
    done
    return 1
}

# Whether NAME's server is installed; prints why not otherwise.
check() {
    case $1 in
    postgres) pg_bin >/dev/null || { echo "PostgreSQL server not installed (bench/peers.sh install)"; return 1; } ;;
    redis) command -v redis-server >/dev/null || { echo "redis-server not installed (bench/peers.sh install)"; return 1; } ;;
    nats) command -v nats-server >/dev/null || { echo "nats-server not installed (bench/peers.sh install)"; return 1; } ;;
    umadb) umadb_bin >/dev/null || { echo "umadb not installed (bench/peers.sh install builds it with cargo install; see $UMADB_LOG)"; return 1; } ;;
    *) die "unknown peer $1 (postgres, redis, nats, umadb)" ;;
    esac
}

install() {
    local wait=${1:-} packages=()
    [[ -z $wait || $wait == --wait ]] || die "usage: $0 install [--wait]"
    pg_bin >/dev/null || packages+=(postgresql)
    command -v redis-server >/dev/null || packages+=(redis-server)
    if ! command -v nats-server >/dev/null; then
        if apt-cache show nats-server >/dev/null 2>&1; then
            packages+=(nats-server)
        else
            echo "nats-server: not in this machine's Debian packages, and its release binary cannot be fetched here: NATS is unavailable" >&2
        fi
    fi
    # UmaDB's build (and cairn-bench's `umadb` feature) compile .proto files
    # with protoc.
    command -v protoc >/dev/null || packages+=(protobuf-compiler)
    # UmaDB's dependencies compile C (aws-lc, its TLS library) with cc.
    umadb_bin >/dev/null || command -v cc >/dev/null || packages+=(build-essential)
    if ((${#packages[@]})); then
        echo "apt-get install ${packages[*]}" >&2
        apt-get update -qq
        # Debian's packages would start their own services; policy-rc.d (or
        # the missing init) stops that in containers, and nothing here relies
        # on those services: `start` runs private instances.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >&2
    fi
    if ! umadb_bin >/dev/null; then
        command -v cargo >/dev/null ||
            die "cargo not found: UmaDB is built with cargo install (install Rust with rustup first)"
        # UmaDB is a Rust program: its build takes many minutes on two cores, so
        # it runs niced in the background, in its own target directory (never
        # the workspace's: that would change its feature unification).
        echo "cargo install umadb: building in the background (log: $UMADB_LOG)" >&2
        mkdir -p "$UMADB_TARGET" "$(dirname "$UMADB_LOG")"
        CARGO_TARGET_DIR=$UMADB_TARGET nohup nice -n 15 cargo install umadb --locked \
            >"$UMADB_LOG" 2>&1 </dev/null &
        local pid=$!
        if [[ $wait == --wait ]]; then
            echo "  pid $pid; waiting for it (two cores: several minutes)" >&2
            wait "$pid" || { tail -n 20 "$UMADB_LOG" >&2; die "cargo install umadb failed (log: $UMADB_LOG)"; }
        else
            echo "  pid $pid; run \`bench/peers.sh check umadb\` later" >&2
        fi
    fi
    if [[ $wait == --wait ]]; then
        local name missing=0
        for name in postgres redis nats umadb; do
            check "$name" >&2 || missing=1
        done
        ((missing == 0)) || die "some peers are still missing (above)"
        echo "all four peers installed" >&2
    fi
}

# Waits until TCP port PORT on 127.0.0.1 accepts a connection (at most 60 s).
wait_port() {
    local port=$1 pid=$2 i
    for ((i = 0; i < 600; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

start() {
    local name=$1 dir=$2 port=$3 pid log
    check "$name" >/dev/null || die "$(check "$name")"
    [[ ! -e $STATE/$name.pid ]] || die "$name already started (pid $(cat "$STATE/$name.pid")); stop it first"
    mkdir -p "$dir" "$STATE"
    [[ -z $(ls -A "$dir") ]] || die "$dir is not empty: each start needs a fresh data directory"
    dir=$(cd "$dir" && pwd)
    log=$dir/server.log
    case $name in
    postgres)
        local bin
        bin=$(pg_bin)
        # PostgreSQL refuses to run as root: the cluster belongs to postgres.
        chown postgres: "$dir"
        runuser -u postgres -- "$bin/initdb" -D "$dir/pg" -U postgres -A trust -E UTF8 --no-locale >"$dir/initdb.log"
        runuser -u postgres -- "$bin/pg_ctl" -D "$dir/pg" -l "$log" -w -t 60 start -o \
            "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=on -c synchronous_commit=on \
             -c wal_sync_method=fdatasync -c full_page_writes=on -c max_connections=100 \
             -c shared_buffers=256MB" >/dev/null
        pid=$(head -n 1 "$dir/pg/postmaster.pid")
        ;;
    redis)
        redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --daemonize no \
            --appendonly yes --appendfsync always --save '' --protected-mode no \
            --logfile "$log" </dev/null >/dev/null 2>&1 &
        pid=$!
        ;;
    nats)
        nats-server -a 127.0.0.1 -p "$port" --jetstream --store_dir "$dir/js" \
            --log "$log" </dev/null >/dev/null 2>&1 &
        pid=$!
        ;;
    umadb)
        local bin
        bin=$(umadb_bin)
        "$bin" --listen "127.0.0.1:$port" --db-path "$dir/uma.db" \
            </dev/null >"$log" 2>&1 &
        pid=$!
        ;;
    esac
    echo "$pid" >"$STATE/$name.pid"
    echo "$dir" >"$STATE/$name.dir"
    if ! wait_port "$port" "$pid"; then
        tail -n 20 "$log" >&2 || true
        stop "$name" || true
        die "$name did not start on 127.0.0.1:$port (log above: $log)"
    fi
    echo "$pid"
}

stop() {
    local name=$1 pid dir i
    [[ -f $STATE/$name.pid ]] || die "$name was not started by this script (no $STATE/$name.pid)"
    pid=$(cat "$STATE/$name.pid")
    dir=$(cat "$STATE/$name.dir" 2>/dev/null || true)
    # A clean shutdown: SIGINT is PostgreSQL's "fast" mode (SIGTERM, "smart",
    # would wait for clients); SIGTERM for the others.
    local signal=TERM
    [[ $name != postgres ]] || signal=INT
    kill -"$signal" "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "peers.sh: $name (pid $pid) did not stop on SIG$signal in 15 s; SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$STATE/$name.pid" "$STATE/$name.dir"
    [[ -z $dir ]] || echo "stopped $name (pid $pid); its data stays in $dir" >&2
}

case ${1:-} in
install) [[ $# -le 2 ]] || die "usage: $0 install [--wait]"; install "${2:-}" ;;
check) [[ $# == 2 ]] || die "usage: $0 check NAME"; check "$2" ;;
start) [[ $# == 4 ]] || die "usage: $0 start NAME DIR PORT"; start "$2" "$3" "$4" ;;
stop) [[ $# == 2 ]] || die "usage: $0 stop NAME"; stop "$2" ;;
*) die "usage: $0 install | check NAME | start NAME DIR PORT | stop NAME" ;;
esac
