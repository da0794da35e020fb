#!/usr/bin/env bash
# A Postgres primary with a synchronous standby, managed by pg_auto_failover,
# on free local ports: for the failover tests and for trying payrail on an HA
# cluster (docs/operations.md, "Running on an HA cluster").
#
#   scripts/ha-cluster.sh start DIR   # monitor + node1 (primary) + node2 (standby)
#   scripts/ha-cluster.sh uri DIR     # the multi-host URL payrail connects with
#   scripts/ha-cluster.sh state DIR   # each node's state as the monitor sees it
#   scripts/ha-cluster.sh kill DIR N  # SIGKILL node N's keeper and all its server's processes
#   scripts/ha-cluster.sh rejoin DIR N  # restart node N's keeper (rejoins as standby)
#   scripts/ha-cluster.sh async DIR   # asynchronous replication (no node in the quorum)
#   scripts/ha-cluster.sh stop DIR    # stop everything (DIR stays)
#
# Installs pg_auto_failover from Debian's packages when it is missing. Runs
# the servers as the postgres user when run as root. The monitor's health
# checks are tightened so that a dead primary is replaced in seconds, not the
# default half minute (see "Failover timing" in docs/operations.md).
set -euo pipefail

cmd=${1:?usage: ha-cluster.sh start|uri|state|kill|rejoin|async|stop DIR [N]}
dir=${2:?usage: ha-cluster.sh $cmd DIR}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

# The command prefix that runs a program as the servers' user.
pg_user=()
if [ "$(id -u)" = 0 ]; then pg_user=(runuser -u postgres --); fi
as_pg() {
    "${pg_user[@]}" env PATH="$PGBIN:$PATH" XDG_CONFIG_HOME="$dir/.config" XDG_DATA_HOME="$dir/.local" "$@"
}

ensure_installed() {
    if ! command -v pg_autoctl >/dev/null || [ ! -e /usr/lib/postgresql/15/lib/pgautofailover.so ]; then
        echo "installing pg_auto_failover (Debian: postgresql-15-auto-failover)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15-auto-failover pg-auto-failover-cli >&2 \
            || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15-auto-failover pg-auto-failover-cli >&2; }
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

monitor_uri() { echo "postgres://autoctl_node@127.0.0.1:$(cat "$dir/monitor.port")/pg_auto_failover?sslmode=disable"; }

# Runs node $1's keeper in the background in a session of its own (so that
# `kill` finds the keeper and every process it started), logging to
# DIR/$1.log. The session leader writes its own pid: setsid forks when it
# happens to be a process group leader, and `$!` would then be a process
# that has already exited.
run_keeper() {
    rm -f "$dir/$1.keeper"
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' keeper "$dir/$1.keeper" \
        "${pg_user[@]}" env PATH="$PGBIN:$PATH" XDG_CONFIG_HOME="$dir/.config" \
        XDG_DATA_HOME="$dir/.local" pg_autoctl run --pgdata "$dir/$1" >>"$dir/$1.log" 2>&1 </dev/null &
    local deadline=$((SECONDS + 10))
    until [ -s "$dir/$1.keeper" ]; do
        [ $SECONDS -lt $deadline ] || { echo "the keeper of $1 did not start" >&2; exit 1; }
        sleep 0.05
    done
}

wait_state() { # node, goal state, seconds
    local deadline=$((SECONDS + $3))
    until as_pg pg_autoctl show state --pgdata "$dir/monitor" 2>/dev/null | awk -F'|' -v n="$1" -v s="$2" '{for (i = 1; i <= NF; i++) gsub(/ /, "", $i)} $1 == n && $6 == s && $7 == s {found=1} END {exit !found}'; do
        if [ $SECONDS -ge $deadline ]; then
            echo "node $1 did not reach $2 within $3 s" >&2
            as_pg pg_autoctl show state --pgdata "$dir/monitor" >&2 || true
            return 1
        fi
        sleep 0.5
    done
}

start() {
    ensure_installed
    mkdir -p "$dir"
    chmod 0777 "$dir"
    local pm; pm=$(free_port); echo "$pm" >"$dir/monitor.port"
    as_pg pg_autoctl create monitor --pgdata "$dir/monitor" --pgport "$pm" \
        --hostname 127.0.0.1 --auth trust --no-ssl >"$dir/monitor.log" 2>&1
    run_keeper monitor
    local deadline=$((SECONDS + 60))
    until as_pg "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$pm"; do
        [ $SECONDS -lt $deadline ] || { echo "monitor did not start" >&2; exit 1; }
        sleep 0.2
    done
    # a dead node is noticed after about 2-3 s instead of 20-30 s
    local sql=()
    for setting in health_check_period=1000 health_check_timeout=1000 health_check_max_retries=1 \
        health_check_retry_delay=500 node_considered_unhealthy_timeout=2000 primary_demote_timeout=5000; do
        sql+=(-c "alter system set pgautofailover.${setting%%=*} = ${setting#*=}")
    done
    as_pg psql -X -q -h 127.0.0.1 -p "$pm" -d pg_auto_failover "${sql[@]}" -c "select pg_reload_conf()" >/dev/null
    for n in 1 2; do
        local port; port=$(free_port); echo "$port" >"$dir/node$n.port"
        as_pg pg_autoctl create postgres --pgdata "$dir/node$n" --pgport "$port" \
            --hostname 127.0.0.1 --name "node$n" --auth trust --no-ssl \
            --monitor "$(monitor_uri)" >"$dir/node$n.log" 2>&1
        as_pg pg_autoctl config set --pgdata "$dir/node$n" timeout.network_partition_timeout 5 >/dev/null
        run_keeper "node$n"
        if [ $n = 1 ]; then wait_state node1 single 120; else wait_state node2 secondary 180; fi
    done
    wait_state node1 primary 60
    # clients on the server's TCP port: trust for this throwaway cluster
    uri
}

uri() {
    echo "postgres://postgres@127.0.0.1:$(cat "$dir/node1.port"),127.0.0.1:$(cat "$dir/node2.port")/postgres?target_session_attrs=read-write&sslmode=disable"
}

state() { as_pg pg_autoctl show state --pgdata "$dir/monitor"; }

# Every process below $1, children first listed after their parent.
descendants() {
    local p
    for p in $(pgrep -P "$1" 2>/dev/null); do
        echo "$p"
        descendants "$p"
    done
}

# SIGKILL of a process and everything below it. All are stopped first, top
# down, so that no supervisor among them restarts what was killed (the
# keeper restarts Postgres within a second, and its services may leave the
# keeper's session).
kill_tree() {
    local all p
    [ -n "$1" ] && kill -0 "$1" 2>/dev/null || return 0
    kill -STOP "$1" 2>/dev/null || true
    all="$1 $(descendants "$1")"
    for p in $all; do kill -STOP "$p" 2>/dev/null || true; done
    for p in $all; do kill -KILL "$p" 2>/dev/null || true; done
}

# SIGKILL of one server (node1, node2, monitor) and its keeper: the
# keeper's whole tree, the postmaster's (a backend whose postmaster died
# keeps serving its connection until it next waits), and the keeper's
# session for anything that left the tree.
kill_server() {
    local sid pid
    sid=$(cat "$dir/$1.keeper" 2>/dev/null || true)
    pid=$(head -1 "$dir/$1/postmaster.pid" 2>/dev/null || true)
    kill_tree "$sid"
    kill_tree "$pid"
    [ -n "$sid" ] && pkill -KILL -s "$sid" 2>/dev/null || true
    return 0
}

kill_node() { kill_server "node${1:?node number}"; }

stop() {
    for n in node1 node2 monitor; do kill_server "$n"; done
}

# Restarts a killed node's keeper; it rejoins as a standby (pg_rewind). The
# data directory of a killed server needs crash recovery before pg_rewind;
# pg_auto_failover 2.0 and pg_rewind 15 race each other doing it (`lock file
# "postmaster.pid" already exists`, then a full pg_basebackup behind a spread
# checkpoint, minutes), so it is done here first, in single-user mode: no
# client can reach the old primary while it recovers.
rejoin() {
    local n=$1 deadline=$((SECONDS + 30))
    until as_pg postgres --single -D "$dir/node$n" template1 </dev/null >>"$dir/node$n.log" 2>&1; do
        # the killed postmaster's children may still hold its shared memory
        [ $SECONDS -lt $deadline ] || { echo "node$n: crash recovery failed" >&2; exit 1; }
        sleep 0.5
    done
    run_keeper "node$n"
}

# Takes every node out of the replication quorum: the primary no longer
# waits for a standby (synchronous_standby_names is emptied by the monitor).
make_async() {
    for n in 1 2; do
        as_pg pg_autoctl set node replication-quorum false --pgdata "$dir/node$n" >/dev/null 2>&1
    done
    local deadline=$((SECONDS + 30)) port
    for n in 1 2; do
        port=$(cat "$dir/node$n.port")
        until [ -z "$(as_pg psql -X -At -h 127.0.0.1 -p "$port" -d postgres -c 'show synchronous_standby_names' 2>/dev/null)" ]; do
            [ $SECONDS -lt $deadline ] || { echo "node$n still synchronous" >&2; exit 1; }
            sleep 0.5
        done
    done
}

case "$cmd" in
    start) start ;;
    uri) uri ;;
    state) state ;;
    kill) kill_node "${3:?node number}" ;;
    rejoin) rejoin "${3:?node number}" ;;
    async) make_async ;;
    stop) stop ;;
    *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
