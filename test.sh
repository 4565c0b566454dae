#!/usr/bin/env bash
# The one test command of the project.
#
# usage: ./test.sh [STEP...]
#   (no argument)  every step in STEPS, in order
#   fmt            cargo fmt --check
#   clippy         cargo clippy --all-targets -- -D warnings
#   cargo-test     cargo test (includes the docker-mode tests)
#   smoke          gateway image + test-cli image, gateway in a container with
#                  the Docker socket, /run end to end through sibling
#                  containers for codex, claude, gemini, opencode and qwen
#   rust           fmt + clippy + cargo-test
#   browser        the web UI (/ui) in Debian's chromium, driven by
#                  playwright-core (tests/ui), against the real gateway binary
#                  running fixture CLIs; fails when chromium cannot start
#   cli-env        (not run by default) the real cligate-cli-env image: each
#                  of the five CLIs through the gateway against a stand-in
#                  LiteLLM; builds the ~2 GB image (npm registry needed)
#
# Checks every prerequisite first (.ci/lib.sh lists them) and FAILS,
# naming each missing one and its Debian package, before running anything; it
# never skips a test because a tool is missing. To add a step: write a
# function step_NAME (dashes in NAME become underscores) and append NAME to
# STEPS below. Ends with a plain
# "total: N passed, M failed" line (cargo test's and node's counts plus the
# smoke checks).
# shellcheck disable=SC2329 # step_* and helpers are called indirectly
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

STEPS=(fmt clippy cargo-test browser smoke)

GATEWAY_IMAGE=${GATEWAY_IMAGE:-cligate:latest}
TEST_CLI_IMAGE=${TEST_CLI_IMAGE:-cligate-test-cli:latest}
export GATEWAY_IMAGE TEST_CLI_IMAGE

SCRIPT=test.sh
# shellcheck source=.ci/lib.sh
. .ci/lib.sh

usage() { sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

# Everything the steps need, checked before any of them runs: one line names each missing piece
# and the Debian package that provides it.
preflight() {
    local missing=()
    mapfile -t missing < <(missing_prerequisites)
    if command -v docker >/dev/null 2>&1; then
        if ! docker info >/dev/null 2>&1; then
            missing+=("a running Docker engine (docker info does not answer; .ci/run starts dockerd)")
        elif ! docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
            missing+=("the debian:bookworm-slim image (.ci/run builds it with debootstrap)")
        fi
    fi
    if ! debian_mirror >/dev/null; then
        missing+=("a Debian mirror for the image builds: $(debian_mirror_problem)")
    fi
    if [ "${#missing[@]}" -gt 0 ]; then
        local line
        line=$(printf '%s, ' "${missing[@]}")
        die "missing prerequisites: ${line%, } (on Debian, .ci/run installs the packages and starts the engine)"
    fi
}

# ---------------------------------------------------------------- rust steps

step_fmt() {
    say "cargo fmt --check"
    cargo fmt --check
}

step_clippy() {
    say "cargo clippy --all-targets -- -D warnings"
    cargo clippy --all-targets -- -D warnings
}

# cargo's own "test result: ok. N passed; M failed" lines are summed into
# the closing total.
CARGO_PASSED=0
CARGO_FAILED=0
# Set when a cargo test run of the smoke or cli-env step fails (its counts are in CARGO_FAILED).
CARGO_BROKE=0
# cargo_test ARGS...: cargo test ARGS, its counts added to the total.
cargo_test() {
    local log status=0 p f
    log=$(mktemp)
    cargo test "$@" 2>&1 | tee "$log" || status=$?
    p=$(sed -nE 's/^test result: .*[^0-9]([0-9]+) passed; ([0-9]+) failed.*/\1/p' "$log" | awk '{ s += $1 } END { print s + 0 }')
    f=$(sed -nE 's/^test result: .*[^0-9]([0-9]+) passed; ([0-9]+) failed.*/\2/p' "$log" | awk '{ s += $1 } END { print s + 0 }')
    CARGO_PASSED=$((CARGO_PASSED + ${p:-0}))
    CARGO_FAILED=$((CARGO_FAILED + ${f:-0}))
    rm -f "$log"
    return "$status"
}

step_cargo_test() {
    # What the Rust tests need installed first: the real Codex CLI that
    # tests/codex.rs drives (into target/codex; idempotent).
    if [ -f tests/install-codex.sh ]; then
        say "tests/install-codex.sh"
        bash tests/install-codex.sh
    fi
    say "cargo test"
    cargo_test
}

# -------------------------------------------------------------- browser step
# The web UI in a real browser: tests/ui/ui.test.mjs (node's test runner) starts
# target/debug/cligate with the fixture CLIs and drives Debian's chromium with
# playwright-core at the version of tests/ui/package-lock.json. Screenshots go
# to target/ui-screenshots/ (examples/ui/ holds the README's copies). First it
# checks that src/ui/vendor/ is exactly what ./build.sh ui-assets makes from
# src/ui/package-lock.json. Node's pass/fail counts join the closing total.
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
export CHROMIUM
BROWSER_PASSED=0
BROWSER_FAILED=0
step_browser() {
    say "browser: the web UI in chromium (tests/ui)"
    command -v node >/dev/null || die "node not found; the browser tests need Node.js and npm (.ci/run installs them)"
    command -v npm >/dev/null || die "npm not found; the browser tests need it (.ci/run installs it)"
    [ -x "$CHROMIUM" ] || die "no chromium at $CHROMIUM; the browser tests need Debian's chromium (.ci/run installs it)"

    local vendor
    vendor=$(mktemp -d)
    UI_ASSETS_OUT=$vendor ./build.sh ui-assets >/dev/null
    if diff -r "$vendor" src/ui/vendor; then
        BROWSER_PASSED=1
        echo "  ok   src/ui/vendor/ is what ./build.sh ui-assets makes from src/ui/package-lock.json"
    else
        BROWSER_FAILED=1
        echo "  FAIL src/ui/vendor/ differs from what ./build.sh ui-assets makes (run it and commit)"
    fi
    rm -rf "$vendor"

    local dir=tests/ui stamp sum
    stamp=$dir/node_modules/.cligate-lock.sha256
    sum=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$sum" ]; then
        say "browser: npm ci in $dir"
        (cd "$dir" && npm ci --no-audit --no-fund --ignore-scripts)
        printf '%s\n' "$sum" >"$stamp"
    fi
    say "browser: cargo build (the gateway the tests start)"
    cargo build --quiet
    local log status=0 p f
    log=$(mktemp)
    CLIGATE_BIN=$PWD/target/debug/cligate node --test --test-reporter=tap "$dir/ui.test.mjs" 2>&1 | tee "$log" || status=$?
    p=$(sed -nE 's/^# pass ([0-9]+)$/\1/p' "$log" | tail -n1)
    # A test cancelled because its suite's set-up failed (chromium did not start) is a failure.
    f=$(sed -nE 's/^# (fail|cancelled) ([0-9]+)$/\2/p' "$log" | tail -n2 | awk '{ s += $1 } END { print s + 0 }')
    rm -f "$log"
    [ -n "$p" ] || die "the browser tests printed no count (did node start them?)"
    BROWSER_PASSED=$((BROWSER_PASSED + p))
    BROWSER_FAILED=$((BROWSER_FAILED + ${f:-0}))
    echo "browser: $BROWSER_PASSED passed, $BROWSER_FAILED failed"
    [ "$status" -eq 0 ] && [ "$BROWSER_FAILED" -eq 0 ]
}

# ---------------------------------------------------------------- smoke step

PASSED=0
FAILED=0
pass() {
    PASSED=$((PASSED + 1))
    printf '  ok   %s\n' "$*"
}
fail() {
    FAILED=$((FAILED + 1))
    printf '  FAIL %s\n' "$*"
}
# check DESCRIPTION COMMAND...: counts one check
check() {
    local desc=$1
    shift
    if "$@"; then pass "$desc"; else fail "$desc"; fi
}
quiet() { "$@" >/dev/null 2>&1; }
has_line() { grep -qxF -- "$2" "$1"; }
lacks_line() { ! grep -qxF -- "$2" "$1"; }
lacks_match() { ! grep -qE -- "$2" "$1"; }
equals() { [ "$1" = "$2" ] || { printf '       got:  %s\n       want: %s\n' "$1" "$2"; false; }; }

SMOKE_TMP=
GW_CONTAINER=
SMOKE_INSTANCE=
FAKE_LLM_PID=
smoke_teardown() {
    local status=$?
    if [ -n "$GW_CONTAINER" ]; then
        if [ "$FAILED" -gt 0 ] || [ "$status" -ne 0 ]; then
            echo "---- gateway logs (last 60 lines) ----"
            docker logs --tail 60 "$GW_CONTAINER" 2>&1 || true
            echo "--------------------------------------"
        fi
        docker rm -f "$GW_CONTAINER" >/dev/null 2>&1 || true
    fi
    if [ -n "$SMOKE_INSTANCE" ]; then
        local left
        left=$(docker ps -aq --filter "label=cligate.instance=$SMOKE_INSTANCE")
        if [ -n "$left" ]; then
            # shellcheck disable=SC2086
            docker rm -f $left >/dev/null 2>&1 || true
        fi
    fi
    if [ -n "$FAKE_LLM_PID" ]; then
        kill "$FAKE_LLM_PID" 2>/dev/null || true
        wait "$FAKE_LLM_PID" 2>/dev/null || true
    fi
    if [ -n "$SMOKE_TMP" ]; then rm -rf "$SMOKE_TMP"; fi
    FAKE_LLM_PID=
    GW_CONTAINER=
    SMOKE_INSTANCE=
    SMOKE_TMP=
}

# start_gateway WHAT CLI_IMAGE DOCKER_NETWORK LITELLM_BASE_URL LITELLM_API_KEY:
# the gateway image in a container (host network, free port, the Docker
# socket mounted) running the CLIs as sibling containers of CLI_IMAGE; sets
# GATEWAY_URL, GW_CONTAINER, SMOKE_INSTANCE, SMOKE_TMP and the teardown trap.
start_gateway() {
    local what=$1 cli_image=$2 network=$3 base_url=$4 key=$5
    SMOKE_TMP=${SMOKE_TMP:-$(mktemp -d)}
    SMOKE_INSTANCE=$what-$$-$RANDOM
    GW_CONTAINER=cligate-$what-gw-$SMOKE_INSTANCE
    trap smoke_teardown EXIT
    local port sock
    port=$(free_port)
    GATEWAY_URL=http://127.0.0.1:$port
    export GATEWAY_URL
    sock=/var/run/docker.sock
    case ${DOCKER_HOST:-} in unix://*) sock=${DOCKER_HOST#unix://} ;; esac

    say "$what: gateway container $GW_CONTAINER on $GATEWAY_URL (instance $SMOKE_INSTANCE, CLIs from $cli_image)"
    docker run -d --init --name "$GW_CONTAINER" --network host \
        -v "$sock:/var/run/docker.sock" \
        -e LISTEN_ADDR="127.0.0.1:$port" \
        -e CODEX_DOCKER_IMAGE="$cli_image" \
        -e CLI_LIST=codex,claude,gemini,opencode,qwen \
        -e MODEL_LIST=auto,gpt-4o \
        -e LITELLM_BASE_URL="$base_url" \
        -e LITELLM_API_KEY="$key" \
        -e RUN_RESPONSE_TIMEOUT_SECONDS=180 \
        -e DOCKER_NETWORK="$network" \
        -e CLIGATE_INSTANCE="$SMOKE_INSTANCE" \
        "$GATEWAY_IMAGE" >/dev/null

    local up=0
    for _ in $(seq 1 60); do
        if curl -fsS --max-time 2 "$GATEWAY_URL/healthz" >/dev/null 2>&1; then
            up=1
            break
        fi
        if [ "$(docker inspect -f '{{.State.Running}}' "$GW_CONTAINER" 2>/dev/null)" != true ]; then
            break
        fi
        sleep 0.5
    done
    [ "$up" = 1 ] || {
        FAILED=$((FAILED + 1))
        die "the gateway container did not answer /healthz (its logs follow)"
    }
}

# No container of the gateway instance may be left behind.
check_no_leftovers() {
    local left=x
    for _ in $(seq 1 20); do
        left=$(docker ps -aq --filter "label=cligate.instance=$SMOKE_INSTANCE")
        [ -z "$left" ] && break
        sleep 0.5
    done
    check "no cligate.instance=$SMOKE_INSTANCE container left" equals "$left" ""
}

step_smoke() {
    say "smoke: build the gateway (binary + image) and the test CLI image"
    ./build.sh gateway test-cli

    local base_url=http://127.0.0.1:4000 key=sk-smoke-$RANDOM
    start_gateway smoke "$TEST_CLI_IMAGE" none "$base_url" "$key"

    local t=$SMOKE_TMP
    say "smoke: checks"
    check "gateway runs in a container with the docker client inside" \
        quiet docker exec "$GW_CONTAINER" docker version --format '{{.Server.Version}}'
    # Everything over HTTP (health, catalog, the five CLIs, exit codes, stop) is Rust, with the
    # tests' own client: tests/smoke.rs, counted in the total with cargo's other tests.
    say "smoke: cargo test --test smoke -- --ignored (against $GATEWAY_URL)"
    CLIGATE_SMOKE_URL=$GATEWAY_URL CLIGATE_SMOKE_LITELLM_BASE_URL=$base_url CLIGATE_SMOKE_LITELLM_API_KEY=$key \
        cargo_test --test smoke -- --ignored --skip a_real_cli_answers || CARGO_BROKE=1
    check_no_leftovers

    # openapi-check
    # Schemathesis against the gateway's own /openapi.json: the release binary
    # built above, started locally with the fixture CLIs (tests/openapi-check.sh
    # installs schemathesis in target/venv, starts and stops the gateway).
    say "smoke: schemathesis (tests/openapi-check.sh)"
    check "schemathesis: the gateway conforms to its OpenAPI document" tests/openapi-check.sh target/release/cligate

    # docker-compose.yml: every compose at hand (preflight asks for one) reads it, publishes the
    # port on loopback unless CLIGATE_BIND says otherwise, and the sidecar's essentials are there.
    local compose y=docker-compose.yml
    for compose in "docker compose" docker-compose; do
        # shellcheck disable=SC2086 # "docker compose" is two words
        quiet $compose version || continue
        # shellcheck disable=SC2086
        check "$y: '$compose config' accepts it" quiet $compose -f "$y" config -q
        # shellcheck disable=SC2086
        check "$y: '$compose' publishes the port on 127.0.0.1 by default" \
            grep -q '127\.0\.0\.1' <<<"$($compose -f "$y" config 2>/dev/null | grep -A8 '^ *ports:')"
        # shellcheck disable=SC2086
        check "$y: '$compose' publishes it on 0.0.0.0 with CLIGATE_BIND=0.0.0.0" \
            grep -q '0\.0\.0\.0' <<<"$(CLIGATE_BIND=0.0.0.0 $compose -f "$y" config 2>/dev/null | grep -A8 '^ *ports:')"
    done
    check "$y: the Docker socket is mounted" has_line "$y" '      - /var/run/docker.sock:/var/run/docker.sock'
    check "$y: init: true" has_line "$y" '    init: true'
    check "$y: run records on a named volume at DATA_DIR" has_line "$y" '      - cligate-data:/var/lib/cligate'
    check "$y: DATA_DIR=/var/lib/cligate" has_line "$y" '      DATA_DIR: "/var/lib/cligate"'
    check "$y: image defaults to cligate-cli-env" has_line "$y" '      CODEX_DOCKER_IMAGE: "${CODEX_DOCKER_IMAGE:-cligate-cli-env:latest}"'
    check "$y: run timeout defaults to 600 s" has_line "$y" '      RUN_RESPONSE_TIMEOUT_SECONDS: "${RUN_RESPONSE_TIMEOUT_SECONDS:-600}"'
    local k
    for k in CLI_LIST MODEL_LIST LITELLM_BASE_URL LITELLM_API_KEY LISTEN_ADDR DOCKER_NETWORK CLIGATE_INSTANCE AUTH_TOKENS; do
        check "$y: sets $k" grep -qE "^      $k: " "$y"
    done

    # The entrypoint alone, in the test image without the gateway.
    say "smoke: entrypoint checks (docker run $TEST_CLI_IMAGE)"
    docker run --rm -i --network none -e LITELLM_BASE_URL=http://proxy:4000/v1/ -e LITELLM_API_KEY=k \
        -e LITELLM_MODEL=m1 "$TEST_CLI_IMAGE" codex exec --model m1 </dev/null >"$t/ep-codex.out" 2>&1 || true
    check "entrypoint: /v1/ suffix normalised for codex" has_line "$t/ep-codex.out" 'base_url = "http://proxy:4000/v1"'
    check "entrypoint: explicit codex exec gets --skip-git-repo-check once" has_line "$t/ep-codex.out" "ARGV=exec --skip-git-repo-check --model m1"
    docker run --rm -i --network none -e LITELLM_BASE_URL=http://proxy:4000/v1 -e LITELLM_API_KEY=k \
        -e LITELLM_MODEL=m1 "$TEST_CLI_IMAGE" claude </dev/null >"$t/ep-claude.out" 2>&1 || true
    check "entrypoint: /v1 suffix dropped for ANTHROPIC_BASE_URL" has_line "$t/ep-claude.out" "ENV ANTHROPIC_BASE_URL=http://proxy:4000"
    docker run --rm -i --network none -e LITELLM_BASE_URL=http://proxy:4000 -e LITELLM_API_KEY=k \
        -e LITELLM_MODEL=m1 "$TEST_CLI_IMAGE" opencode run -m other --model=x "a b" </dev/null >"$t/ep-opencode.out" 2>&1 || true
    check "entrypoint: opencode model flags replaced by one litellm/ model" has_line "$t/ep-opencode.out" "ARGV=run --model litellm/m1 a b"
    docker run --rm -i --network none -e LITELLM_BASE_URL=http://proxy:4000 \
        "$TEST_CLI_IMAGE" opencode run "a b" </dev/null >"$t/ep-opencode2.out" 2>&1 || true
    check "entrypoint: explicit opencode run without a model stays as given" has_line "$t/ep-opencode2.out" "ARGV=run a b"
    check "entrypoint: opencode run with 'a b' keeps it one argument" has_line "$t/ep-opencode2.out" "ARG2=a b"
    docker run --rm -i --network none --user 4242:4242 -e LITELLM_BASE_URL=http://proxy:4000 \
        "$TEST_CLI_IMAGE" codex </dev/null >"$t/ep-uid.out" 2>&1 || true
    check "entrypoint: under another uid the settings go to a fresh HOME" grep -qE '^FILE /tmp/home\.[A-Za-z0-9]+/\.codex/config\.toml$' "$t/ep-uid.out"
    docker run --rm -i --network none "$TEST_CLI_IMAGE" gemini -p hi </dev/null >"$t/ep-plain.out" 2>&1 || true
    check "entrypoint: without LITELLM_* nothing is mapped" has_line "$t/ep-plain.out" "UNSET GOOGLE_GEMINI_BASE_URL"
    check "entrypoint: without LITELLM_* no settings file is written" has_line "$t/ep-plain.out" "NOFILE /home/cli/.gemini/settings.json"
    check "entrypoint: a non-CLI command runs unchanged" \
        equals "$(docker run --rm --network none "$TEST_CLI_IMAGE" sh -c 'echo plain-$((1+1))' 2>&1)" plain-2
    check "entrypoint: no arguments is a usage error (64)" \
        equals "$(docker run --rm --network none --entrypoint /usr/local/bin/cligate-cli-entrypoint "$TEST_CLI_IMAGE" >/dev/null 2>&1; echo $?)" 64

    smoke_teardown
    trap - EXIT
    echo
    echo "smoke: $PASSED shell checks passed, $FAILED failed (and tests/smoke.rs above)"
    [ "$FAILED" -eq 0 ] && [ "$CARGO_BROKE" = 0 ]
}

# ------------------------------------------------------- cli-env step (opt-in)
# The real image end to end: the gateway container runs the five real CLIs of
# cligate-cli-env (built by ./build.sh cli-env: npm registry needed, ~2 GB)
# against docker/test-cli/fake_llm.py, a stand-in LiteLLM on a loopback port.
# Not in STEPS: run it as ./test.sh cli-env.
CLI_ENV_IMAGE=${CLI_ENV_IMAGE:-cligate-cli-env:latest}
export CLI_ENV_IMAGE
step_cli_env() {
    say "cli-env: build the gateway (binary + image) and the CLI environment image"
    ./build.sh gateway cli-env

    local llm_port llm_log key=sk-cli-env-$RANDOM
    SMOKE_TMP=$(mktemp -d)
    trap smoke_teardown EXIT
    llm_port=$(free_port)
    llm_log=$SMOKE_TMP/llm.log
    python3 docker/test-cli/fake_llm.py "$llm_port" "$llm_log" &
    FAKE_LLM_PID=$!
    # The run containers share the host network to reach the loopback LLM.
    start_gateway cli-env "$CLI_ENV_IMAGE" host "http://127.0.0.1:$llm_port" "$key"
    curl -fsS --max-time 5 "http://127.0.0.1:$llm_port/v1/models" >/dev/null ||
        die "the fake LLM on port $llm_port does not answer"

    local t=$SMOKE_TMP cli want_path auth
    say "cli-env: checks (each real CLI once, through the gateway: tests/smoke.rs)"
    for cli in ${CLI_ENV_CLIS:-codex claude gemini opencode qwen}; do
        : >"$llm_log"
        CLIGATE_SMOKE_URL=$GATEWAY_URL CLIGATE_SMOKE_LITELLM_BASE_URL="http://127.0.0.1:$llm_port" \
            CLIGATE_SMOKE_LITELLM_API_KEY=$key CLIGATE_SMOKE_CLI=$cli \
            cargo_test --test smoke -- --ignored --exact a_real_cli_answers_through_the_gateway || CARGO_BROKE=1
        case $cli in
            codex) want_path=/v1/responses auth='"authorization": "Bearer '$key'"' ;;
            claude) want_path=/v1/messages auth='"authorization": "Bearer '$key'"' ;;
            gemini) want_path=/v1beta/models/gpt-4o: auth='"x-goog-api-key": "'$key'"' ;;
            opencode | qwen) want_path=/v1/chat/completions auth='"authorization": "Bearer '$key'"' ;;
        esac
        check "$cli: asked the LiteLLM stand-in at $want_path" grep -qF "\"path\": \"$want_path" "$llm_log"
        check "$cli: with the LiteLLM key" grep -qF "$auth" "$llm_log"
        if [ "$cli" != gemini ]; then
            check "$cli: for model gpt-4o" grep -qF '"model": "gpt-4o"' "$llm_log"
        fi
        if [ "$FAILED" -gt 0 ]; then
            echo "       requests of $cli:"
            sed 's/^/         /' "$llm_log"
        fi
    done
    check_no_leftovers

    smoke_teardown
    trap - EXIT
    echo
    echo "cli-env: $PASSED shell checks passed, $FAILED failed (and tests/smoke.rs above)"
    [ "$FAILED" -eq 0 ] && [ "$CARGO_BROKE" = 0 ]
}

# ------------------------------------------------------------------- main
# All in one function, called on the last line with `exit`: bash reads a
# script as it runs it, and the background job in the stop check shares the
# script's file offset; nothing may be left to read after it.
main() {
    [ "$#" -gt 0 ] || set -- "${STEPS[@]}"
    for arg in "$@"; do
        case $arg in
            -h | --help | help)
                usage
                exit 0
                ;;
        esac
    done
    preflight
    for arg in "$@"; do
        case $arg in
            rust) step_fmt && step_clippy && step_cargo_test ;;
            *)
                if declare -F "step_${arg//-/_}" >/dev/null; then
                    "step_${arg//-/_}"
                else
                    usage >&2
                    die "unknown step: $arg"
                fi
                ;;
        esac
    done
    say "all steps passed: $*"
    echo "total: $((CARGO_PASSED + BROWSER_PASSED + PASSED)) passed, $((CARGO_FAILED + BROWSER_FAILED + FAILED)) failed"
}

main "$@"; exit $?
