#!/usr/bin/env bash
# cligate benchmark harness: builds the release binary and the driver (benches/gateway.rs),
# starts gateways on free loopback ports and measures each figure against a baseline taken in
# the same invocation. Prints a Markdown table and writes it to benches/results.md.
#
# usage: ./benches/run.sh [--only spawn,latency,detached,throughput,memory,fanout,reattach,docker,replicas,webhook]
#   BENCH_SCALE=0.3 ./benches/run.sh   shorter rounds (quick look; figures are noisier)
#   BENCH_GATEWAY_ENV="K=V …"          settings for every gateway (to explore; not for results.md)
#   BENCH_OUT=FILE                     where the table goes (default benches/results.md;
#                                      not written with --only)
# Needs: wrk and webhook (Debian packages) for the peer row, a Docker engine and
# busybox-static for the docker row, PostgreSQL (initdb, postgres) for the replica rows; rows whose
# tools are missing are skipped with a note.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SCRIPT=benches/run.sh
# shellcheck source=.ci/lib.sh
. .ci/lib.sh

say "building the release binary"
cargo build --release --bin cligate

# Docker mode needs an engine. Start one if none answers and we may (root, dockerd present,
# none running already); without one the docker row is skipped with a note.
if command -v docker >/dev/null 2>&1 && ! docker info >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null 2>&1 && ! pgrep -x dockerd >/dev/null; then
        say "no Docker engine answers; starting dockerd (log: /tmp/dockerd.log)"
        nohup dockerd --iptables=false --bridge=none >/tmp/dockerd.log 2>&1 &
        for _ in $(seq 1 30); do
            docker info >/dev/null 2>&1 && break
            sleep 1
        done
    fi
fi

say "building and running the driver"
export CLIGATE_BIN="$PWD/target/release/cligate"
# The driver has its own 9-minute watchdog; this is the outer bound.
exec timeout --kill-after=10 600 cargo bench --bench gateway -- "$@"
