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
# Needs a running Docker engine: it FAILS (does not skip) if `docker info`
# does not answer. To add a step: write a function step_NAME (dashes in NAME
# become underscores) and append NAME to STEPS below. Ends with a plain
# "total: N passed, M failed" line (cargo test's and node's counts plus the
# smoke checks).
# shellcheck disable=SC2329 # step_* and helpers are called indirectly
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

STEPS=(fmt clippy cargo-test browser smoke)

GATEWAY_IMAGE=${GATEWAY_IMAGE:-cligate:latest}
TEST_CLI_IMAGE=${TEST_CLI_IMAGE:-cligate-test-cli:latest}
export GATEWAY_IMAGE TEST_CLI_IMAGE

say() { printf '\n==> test.sh: %s\n' "$*"; }
die() {
    printf 'test.sh: FAIL: %s\n' "$*" >&2
    exit 1
}

usage() { sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

require_docker() {
    command -v docker >/dev/null || die "no docker client on PATH; the tests need a Docker engine"
    if ! docker info >/dev/null 2>&1; then
        docker info >&2 || true
        die "docker info does not answer; the tests need a running Docker engine"
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
step_cargo_test() {
    # What the Rust tests need installed first: the real Codex CLI that
    # tests/codex.rs drives (into target/codex; idempotent).
    if [ -f tests/install-codex.sh ]; then
        say "tests/install-codex.sh"
        bash tests/install-codex.sh
    fi
    say "cargo test"
    local log
    log=$(mktemp)
    local status=0
    cargo test 2>&1 | tee "$log" || status=$?
    local p f
    p=$(sed -nE 's/^test result: .*[^0-9]([0-9]+) passed; ([0-9]+) failed.*/\1/p' "$log" | awk '{ s += $1 } END { print s + 0 }')
    f=$(sed -nE 's/^test result: .*[^0-9]([0-9]+) passed; ([0-9]+) failed.*/\2/p' "$log" | awk '{ s += $1 } END { print s + 0 }')
    CARGO_PASSED=${p:-0}
    CARGO_FAILED=${f:-0}
    rm -f "$log"
    return "$status"
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

# ---------------------------------------------------------- JSON helpers
# jq when present, python3 otherwise.

if command -v jq >/dev/null 2>&1; then
    # json_eq FILE FILTER: the compact JSON value of FILTER on FILE
    json_eq() { jq -c "$2" "$1"; }
    # ndjson FILE WHAT: session | stdout | stderr | last | count | types
    ndjson() {
        case $2 in
            session) jq -r 'select(.type == "session") | .id' "$1" | head -n1 ;;
            stdout | stderr) jq -j --arg t "$2" 'select(.type == $t) | .data' "$1" ;;
            last) tail -n1 "$1" | jq -r '"\(.type) \(.code) \(.reason)"' ;;
            count) jq -s 'length' "$1" ;;
            types) jq -r '.type' "$1" | uniq | paste -sd, - ;;
        esac
    }
else
    json_eq() {
        python3 - "$1" "$2" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
path = sys.argv[2]
# supports ".", ".key", ".key | sort", ".key | length"
parts = [p.strip() for p in path.split("|")]
v = doc
for p in parts:
    if p == ".":
        continue
    if p == "sort":
        v = sorted(v)
    elif p == "length":
        v = len(v)
    elif p.startswith("."):
        v = v[p[1:]]
print(json.dumps(v, separators=(",", ":")))
PY
    }
    ndjson() {
        python3 - "$1" "$2" <<'PY'
import json, sys
frames = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
what = sys.argv[2]
if what == "session":
    print(next((f.get("id") for f in frames if f.get("type") == "session"), ""))
elif what in ("stdout", "stderr"):
    sys.stdout.write("".join(f.get("data", "") for f in frames if f.get("type") == what))
elif what == "last":
    f = frames[-1] if frames else {}
    j = lambda x: "null" if x is None else str(x)
    print(j(f.get("type")), j(f.get("code")), j(f.get("reason")))
elif what == "count":
    print(len(frames))
elif what == "types":
    out = []
    for f in frames:
        if not out or out[-1] != f.get("type"):
            out.append(f.get("type"))
    print(",".join(map(str, out)))
PY
    }
fi

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

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

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

# run_cli NAME JSON: POST /run, NDJSON to $SMOKE_TMP/NAME.ndjson, stdout text
# to NAME.out, stderr text to NAME.err; HTTP status in NAME.status
run_cli() {
    local name=$1 body=$2 f=$SMOKE_TMP/$1
    curl -sS -N --max-time "${RUN_CURL_TIMEOUT:-60}" -o "$f.ndjson" -w '%{http_code}' \
        -H 'content-type: application/json' -d "$body" "$GATEWAY_URL/run" >"$f.status" 2>"$f.curl" || true
    ndjson "$f.ndjson" stdout >"$f.out" 2>/dev/null || true
    ndjson "$f.ndjson" stderr >"$f.err" 2>/dev/null || true
}

# The checks every finished /run stream must pass.
check_stream() {
    local name=$1 sid=$2 code=${3:-0} f=$SMOKE_TMP/$1
    check "$name: HTTP 200" equals "$(cat "$f.status")" 200
    check "$name: first frame is the session ($sid)" equals "$(head -n1 "$f.ndjson" | ndjson /dev/stdin session 2>/dev/null)" "$sid"
    check "$name: stream ends with exit code $code, reason exited" equals "$(ndjson "$f.ndjson" last 2>/dev/null)" "exit $code exited"
    check "$name: stderr frames carry the CLI's stderr" grep -q "this line goes to stderr" "$f.err"
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
    check "GET /healthz is ok" equals "$(curl -sS --max-time 5 "$GATEWAY_URL/healthz")" ok
    check "GET /readyz is 200" equals "$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "$GATEWAY_URL/readyz")" 200
    curl -sS --max-time 5 "$GATEWAY_URL/clis" >"$t/clis.json"
    check "GET /clis lists the five CLIs, sorted" \
        equals "$(json_eq "$t/clis.json" .)" '{"clis":["claude","codex","gemini","opencode","qwen"],"count":5}'
    curl -sS --max-time 5 "$GATEWAY_URL/models" >"$t/models.json"
    check "GET /models lists auto and gpt-4o" equals "$(json_eq "$t/models.json" '.models | sort')" '["auto","gpt-4o"]'
    check "GET /models count is 2" equals "$(json_eq "$t/models.json" '.count')" 2

    local cli sid
    for cli in codex claude gemini opencode qwen; do
        sid=smoke-$cli-$RANDOM
        run_cli "$cli" "{\"cli\":\"$cli\",\"args\":[\"--model\",\"gpt-4o\"],\"stdin\":\"hello $cli\",\"env\":{\"CLIGATE_SMOKE\":\"yes-$cli\"},\"session_id\":\"$sid\"}"
        check_stream "$cli" "$sid" 0
        local o=$t/$cli.out
        check "$cli: the fake $cli ran in the sibling container" has_line "$o" "FAKE_CLI=$cli"
        check "$cli: prompt arrived on stdin, not a TTY" has_line "$o" "STDIN=hello $cli"
        check "$cli: request env reached the container" has_line "$o" "ENV CLIGATE_SMOKE=yes-$cli"
        check "$cli: CLI_PROVIDER_NAME=$cli" has_line "$o" "ENV CLI_PROVIDER_NAME=$cli"
        check "$cli: LITELLM_BASE_URL passed through" has_line "$o" "ENV LITELLM_BASE_URL=$base_url"
        check "$cli: LITELLM_API_KEY passed through" has_line "$o" "ENV LITELLM_API_KEY=$key"
        check "$cli: LITELLM_MODEL inferred from --model" has_line "$o" "ENV LITELLM_MODEL=gpt-4o"
        check "$cli: the run exited (DONE printed)" has_line "$o" "DONE"
        case $cli in
            codex)
                check "codex: non-interactive: exec --skip-git-repo-check" has_line "$o" "ARGV=exec --skip-git-repo-check --model gpt-4o"
                check "codex: config.toml written in CODEX_HOME" has_line "$o" "FILE /home/cli/.codex/config.toml"
                check "codex: config selects the litellm provider" has_line "$o" 'model_provider = "litellm"'
                check "codex: config sets the model" has_line "$o" 'model = "gpt-4o"'
                check "codex: config has [model_providers.litellm]" has_line "$o" '[model_providers.litellm]'
                check "codex: provider base_url" has_line "$o" "base_url = \"$base_url/v1\""
                check "codex: provider env_key" has_line "$o" 'env_key = "LITELLM_API_KEY"'
                check "codex: provider wire_api = responses" has_line "$o" 'wire_api = "responses"'
                check "codex: the key is not written into config.toml" lacks_match "$o" "^[a-z_]+ = \"$key\""
                ;;
            claude)
                check "claude: arguments untouched" has_line "$o" "ARGV=--model gpt-4o"
                check "claude: ANTHROPIC_BASE_URL" has_line "$o" "ENV ANTHROPIC_BASE_URL=$base_url"
                check "claude: ANTHROPIC_AUTH_TOKEN" has_line "$o" "ENV ANTHROPIC_AUTH_TOKEN=$key"
                check "claude: ANTHROPIC_MODEL" has_line "$o" "ENV ANTHROPIC_MODEL=gpt-4o"
                check "claude: small/fast model follows" has_line "$o" "ENV ANTHROPIC_DEFAULT_HAIKU_MODEL=gpt-4o"
                ;;
            gemini)
                check "gemini: arguments untouched" has_line "$o" "ARGV=--model gpt-4o"
                check "gemini: GOOGLE_GEMINI_BASE_URL" has_line "$o" "ENV GOOGLE_GEMINI_BASE_URL=$base_url"
                check "gemini: GEMINI_API_KEY" has_line "$o" "ENV GEMINI_API_KEY=$key"
                check "gemini: GEMINI_MODEL" has_line "$o" "ENV GEMINI_MODEL=gpt-4o"
                check "gemini: settings.json selects API-key auth" grep -q '"selectedType": "gemini-api-key"' "$o"
                ;;
            opencode)
                check "opencode: run --model litellm/gpt-4o" has_line "$o" "ARGV=run --model litellm/gpt-4o"
                check "opencode: exactly one model flag" has_line "$o" "ARGC=3"
                check "opencode: OPENCODE_CONFIG points at the written config" has_line "$o" "ENV OPENCODE_CONFIG=/home/cli/.config/opencode/opencode.json"
                check "opencode: config has the litellm provider" grep -q '"litellm": {' "$o"
                check "opencode: config uses @ai-sdk/openai-compatible" has_line "$o" '      "npm": "@ai-sdk/openai-compatible",'
                check "opencode: config baseURL" has_line "$o" "        \"baseURL\": \"$base_url/v1\","
                check "opencode: config apiKey from the environment" has_line "$o" '        "apiKey": "{env:LITELLM_API_KEY}"'
                check "opencode: config declares the model" has_line "$o" '        "gpt-4o": { "name": "gpt-4o" }'
                check "opencode: config default model" has_line "$o" '  "model": "litellm/gpt-4o",'
                ;;
            qwen)
                check "qwen: arguments untouched" has_line "$o" "ARGV=--model gpt-4o"
                check "qwen: OPENAI_BASE_URL" has_line "$o" "ENV OPENAI_BASE_URL=$base_url/v1"
                check "qwen: OPENAI_API_KEY" has_line "$o" "ENV OPENAI_API_KEY=$key"
                check "qwen: OPENAI_MODEL" has_line "$o" "ENV OPENAI_MODEL=gpt-4o"
                ;;
        esac
    done

    # A first argument the entrypoint does not rewrite passes through.
    sid=smoke-version-$RANDOM
    run_cli codex-version "{\"cli\":\"codex\",\"args\":[\"--version\"],\"stdin\":\"\",\"session_id\":\"$sid\"}"
    check_stream codex-version "$sid" 0
    check "codex --version passes through unchanged" has_line "$t/codex-version.out" "ARGV=--version"

    # The CLI's exit code is the exit frame's code.
    sid=smoke-exit-$RANDOM
    run_cli exit-code "{\"cli\":\"qwen\",\"args\":[],\"stdin\":\"x\",\"env\":{\"FAKE_EXIT\":\"3\"},\"session_id\":\"$sid\"}"
    check_stream exit-code "$sid" 3

    # POST /sessions/{id}/stop ends a running session and its container.
    sid=smoke-stop-$RANDOM
    (run_cli stop "{\"cli\":\"claude\",\"args\":[],\"stdin\":\"x\",\"env\":{\"FAKE_SLEEP\":\"60\"},\"session_id\":\"$sid\"}") &
    local runner=$! started=0
    for _ in $(seq 1 40); do
        if grep -q 'SLEEPING=' "$t/stop.ndjson" 2>/dev/null; then
            started=1
            break
        fi
        sleep 0.5
    done
    check "stop: the long session started" equals "$started" 1
    local stop_status
    stop_status=$(curl -sS --max-time 10 -o "$t/stop-resp" -w '%{http_code}' -X POST "$GATEWAY_URL/sessions/$sid/stop" || true)
    check "stop: POST /sessions/$sid/stop answers 2xx" grep -qE '^2[0-9][0-9]$' <<<"$stop_status"
    local stopped=0
    for _ in $(seq 1 40); do
        if ! kill -0 "$runner" 2>/dev/null; then
            stopped=1
            break
        fi
        sleep 0.5
    done
    wait "$runner" || true
    check "stop: the stream ended within 20 s" equals "$stopped" 1
    check "stop: the stream's last frame is an exit frame" grep -q '^exit ' <<<"$(ndjson "$t/stop.ndjson" last 2>/dev/null)"
    check "stop: the CLI did not run to its end" lacks_line "$t/stop.out" "DONE"
    printf '       (stop exit frame: %s)\n' "$(ndjson "$t/stop.ndjson" last 2>/dev/null)"

    check_no_leftovers

    # openapi-check
    # Schemathesis against the gateway's own /openapi.json: the release binary
    # built above, started locally with the fixture CLIs (tests/openapi-check.sh
    # installs schemathesis in target/venv, starts and stops the gateway).
    say "smoke: schemathesis (tests/openapi-check.sh)"
    check "schemathesis: the gateway conforms to its OpenAPI document" tests/openapi-check.sh target/release/cligate

    # docker-compose.yml: parsed (PyYAML or `docker compose config`) and the
    # sidecar's essentials present.
    if python3 -c 'import yaml' 2>/dev/null; then
        check "docker-compose.yml: sidecar with the socket, init, port 8000 and the contract's variables" \
            python3 - docker-compose.yml <<'PY'
import sys, yaml
svc = yaml.safe_load(open(sys.argv[1]))["services"]["cligate"]
env = svc["environment"]
assert svc["image"] == "cligate:latest", svc["image"]
assert svc["init"] is True
assert "/var/run/docker.sock:/var/run/docker.sock" in svc["volumes"]
assert any(str(p).endswith(":8000") for p in svc["ports"])
for k in ("CODEX_DOCKER_IMAGE", "CLI_LIST", "MODEL_LIST", "LITELLM_BASE_URL", "LITELLM_API_KEY",
          "RUN_RESPONSE_TIMEOUT_SECONDS", "LISTEN_ADDR", "DOCKER_NETWORK", "CLIGATE_INSTANCE"):
    assert k in env, k
assert env["CODEX_DOCKER_IMAGE"] == "${CODEX_DOCKER_IMAGE:-cligate-cli-env:latest}"
assert env["RUN_RESPONSE_TIMEOUT_SECONDS"] == "${RUN_RESPONSE_TIMEOUT_SECONDS:-600}"
# Run records and logs outlive the container: a named volume at DATA_DIR.
assert env["DATA_DIR"] == "/var/lib/cligate"
assert "cligate-data:/var/lib/cligate" in svc["volumes"]
assert "cligate-data" in yaml.safe_load(open(sys.argv[1]))["volumes"]
PY
    elif docker compose version >/dev/null 2>&1; then
        check "docker-compose.yml: docker compose config accepts it" quiet docker compose -f docker-compose.yml config -q
    else
        echo "  note: neither PyYAML nor docker compose here: docker-compose.yml not checked"
    fi

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
    echo "smoke: $PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
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

    local t=$SMOKE_TMP cli sid want_path auth
    say "cli-env: checks (each real CLI once, through the gateway)"
    for cli in ${CLI_ENV_CLIS:-codex claude gemini opencode qwen}; do
        : >"$llm_log"
        sid=cli-env-$cli-$RANDOM
        RUN_CURL_TIMEOUT=180 run_cli "$cli" "{\"cli\":\"$cli\",\"args\":[\"--model\",\"gpt-4o\"],\"stdin\":\"Say hello.\",\"session_id\":\"$sid\"}"
        check "$cli: HTTP 200" equals "$(cat "$t/$cli.status")" 200
        check "$cli: stream ends with exit code 0, reason exited" equals "$(ndjson "$t/$cli.ndjson" last 2>/dev/null)" "exit 0 exited"
        check "$cli: stdout is the model's answer only" equals "$(tr -d '\r\n' <"$t/$cli.out")" FAKE-ANSWER-42
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
            echo "       stderr of $cli (tail):"
            tail -n 15 "$t/$cli.err" | sed 's/^/         /'
        fi
    done
    check_no_leftovers

    smoke_teardown
    trap - EXIT
    echo
    echo "cli-env: $PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
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
    require_docker
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
