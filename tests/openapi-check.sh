#!/usr/bin/env bash
# Checks the running gateway against its own OpenAPI document with Schemathesis.
#
# usage: tests/openapi-check.sh [BINARY]
#   BINARY  the cligate binary to start (default: target/release/cligate if
#           present, else target/debug/cligate, built with cargo if missing)
#
# Installs Schemathesis $SCHEMATHESIS_VERSION into a venv under target/venv
# (once), starts the binary in local mode on a free loopback port with the
# fixture CLIs of tests/fixtures/bin, runs `schemathesis run` against
# /openapi.json with bounded examples and the hooks of
# tests/schemathesis_hooks.py, and stops the gateway on exit.
# Environment: SCHEMATHESIS_MAX_EXAMPLES (default 300), SCHEMATHESIS_SEED.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SCHEMATHESIS_VERSION=4.32.5
VENV=target/venv
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-300}

SCRIPT=openapi-check
# shellcheck source=.ci/lib.sh
. .ci/lib.sh

bin=${1:-}
if [ -z "$bin" ]; then
    if [ -x target/release/cligate ]; then
        bin=target/release/cligate
    else
        [ -x target/debug/cligate ] || cargo build --quiet
        bin=target/debug/cligate
    fi
fi
[ -x "$bin" ] || die "no gateway binary at $bin"

if [ "$("$VENV/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version $SCHEMATHESIS_VERSION" ]; then
    say "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

port=$(free_port)
url=http://127.0.0.1:$port
work=$PWD/target/schemathesis
rm -rf "$work/report"
mkdir -p "$work/report"
log=$work/gateway.log
gw_pid=
cleanup() {
    if [ -n "$gw_pid" ] && kill -0 "$gw_pid" 2>/dev/null; then
        kill -TERM "$gw_pid" 2>/dev/null || true
        wait "$gw_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

say "starting $bin on $url (local mode, CLI_LIST=args,echo-stdin; log: $log)"
# Its run records and logs go to a fresh directory under target/, never into the checkout.
rm -rf "$work/data"
env -u CODEX_DOCKER_IMAGE -u AUTH_TOKENS -u AUTH_TOKENS_FILE -u ALLOWED_CLIENTS \
    LISTEN_ADDR="127.0.0.1:$port" \
    DATA_DIR="$work/data" \
    CLI_LIST=args,echo-stdin \
    MODEL_LIST=auto,gpt-4o \
    PATH="$PWD/tests/fixtures/bin:$PATH" \
    RUN_RESPONSE_TIMEOUT_SECONDS=10 \
    KILL_GRACE_SECONDS=1 \
    SHUTDOWN_GRACE_SECONDS=1 \
    RUST_LOG=warn \
    "$bin" 2>"$log" &
gw_pid=$!
up=0
for _ in $(seq 1 100); do
    if curl -fsS --max-time 1 "$url/healthz" >/dev/null 2>&1; then
        up=1
        break
    fi
    kill -0 "$gw_pid" 2>/dev/null || break
    sleep 0.1
done
if [ "$up" != 1 ]; then
    cat "$log" >&2
    die "the gateway did not answer /healthz"
fi

# Checks: no server error; documented status codes, content types and headers;
# bodies that match their schemas; invalid data refused with a 4xx; undocumented
# methods answered with 405 and a correct Allow header; and ndjson_stream (from
# tests/schemathesis_hooks.py) for the frames of POST /run.
# positive_data_acceptance is left out on purpose: a schema-valid `cli` is
# still refused (400) unless it is in CLI_LIST, which no schema can know.
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance
checks=$checks,response_schema_conformance,negative_data_rejection,unsupported_method,allow_header_conformance
checks=$checks,ndjson_stream
seed=()
[ -z "${SCHEMATHESIS_SEED:-}" ] || seed=(--seed "$SCHEMATHESIS_SEED")
say "schemathesis $SCHEMATHESIS_VERSION run $url/openapi.json (max $MAX_EXAMPLES examples per operation)"
status=0
# From $work: Schemathesis keeps its cache in ./.schemathesis. One worker: with several,
# Hypothesis describes filter lambdas with ast.parse from several threads at once, and
# CPython 3.11 then fails at random ("AST constructor recursion depth mismatch").
(cd "$work" && PYTHONPATH=$OLDPWD/tests SCHEMATHESIS_HOOKS=schemathesis_hooks \
    "$OLDPWD/$VENV/bin/schemathesis" run "$url/openapi.json" \
    --checks "$checks" \
    --max-examples "$MAX_EXAMPLES" \
    --phases examples,coverage,fuzzing \
    --request-timeout 20 \
    --workers 1 \
    "${seed[@]}" \
    --report junit,har --report-dir "$work/report") || status=$?

kill -0 "$gw_pid" 2>/dev/null || {
    cat "$log" >&2
    die "the gateway died during the run"
}
kill -TERM "$gw_pid"
gw_status=0
wait "$gw_pid" || gw_status=$?
gw_pid=
if grep -qiE 'panick|ERROR' "$log"; then
    cat "$log" >&2
    die "the gateway logged an error or a panic during the run"
fi
[ "$gw_status" -eq 0 ] || die "the gateway exited with $gw_status after SIGTERM"
[ "$status" -eq 0 ] || die "schemathesis found problems (exit $status; reports in $work/report)"
say "passed"
