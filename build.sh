#!/usr/bin/env bash
# Build cligate: the release binary and its Docker images.
#
# usage: ./build.sh [TARGET...]
#   all       (default) binary + gateway image + cli-env image
#   binary    cargo build --release  -> target/release/cligate
#   gateway   binary + the gateway image            ($GATEWAY_IMAGE,  default cligate:latest)
#   cli-env   the CLI environment image              ($CLI_ENV_IMAGE,  default cligate-cli-env:latest)
#             (npm install of docker/cli-env on the host first; big: ~1.5 GB)
#   test-cli  the small fake-CLI image for ./test.sh ($TEST_CLI_IMAGE, default cligate-test-cli:latest)
#   ui-assets src/ui/vendor/ from src/ui/package-lock.json (npm ci; the files are
#             committed and embedded in the binary, so only a package update needs it)
#             UI_ASSETS_OUT=DIR writes them to DIR instead (./test.sh compares them)
#
# The images build FROM debian:bookworm-slim; where no registry is reachable
# it must exist locally (.ci/run makes one with debootstrap). Package installs
# in the builds use `docker build --network host`. The gateway image installs
# Debian's docker-cli from DEBIAN_MIRROR: by default the mirror of this
# machine's apt sources on a Debian host; on any other host (Ubuntu) set it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

GATEWAY_IMAGE=${GATEWAY_IMAGE:-cligate:latest}
CLI_ENV_IMAGE=${CLI_ENV_IMAGE:-cligate-cli-env:latest}
TEST_CLI_IMAGE=${TEST_CLI_IMAGE:-cligate-test-cli:latest}
BASE_IMAGE=debian:bookworm-slim

SCRIPT=build.sh
# shellcheck source=.ci/lib.sh
. .ci/lib.sh

usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

need_docker() {
    command -v docker >/dev/null || die "docker client not found"
    docker info >/dev/null 2>&1 || die "the Docker engine does not answer (docker info failed)"
    if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        say "note: $BASE_IMAGE is not present locally; docker build will try to pull it" \
            "(without a registry, create it first: .ci/run does it with debootstrap)"
    fi
}

build_binary() {
    say "cargo build --release"
    cargo build --release
    [ -x target/release/cligate ] || die "cargo build did not produce target/release/cligate"
}

build_gateway() {
    need_docker
    [ -x target/release/cligate ] || die "target/release/cligate missing (run ./build.sh binary)"
    local mirror
    mirror=$(debian_mirror) || die "the gateway image installs Debian's docker-cli: $(debian_mirror_problem)"
    say "docker build $GATEWAY_IMAGE (docker/Dockerfile, Debian mirror $mirror)"
    docker build --network host \
        --build-arg "DEBIAN_MIRROR=$mirror" \
        -f docker/Dockerfile -t "$GATEWAY_IMAGE" .
}

build_cli_env() {
    need_docker
    command -v npm >/dev/null || die "npm not found on the host (node_modules for the CLI image are installed on the host)"
    local dir=docker/cli-env stamp sum
    stamp=$dir/node_modules/.cligate-lock.sha256
    sum=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ] && [ -z "${CLI_ENV_REINSTALL:-}" ]; then
        say "docker/cli-env/node_modules matches package-lock.json (CLI_ENV_REINSTALL=1 to redo)"
    else
        # A clean install of exactly the versions in package-lock.json. Not
        # `npm ci`: npm 11 writes lock files without the other platforms'
        # optional packages (opencode-darwin-*, ...) and then its `ci` refuses
        # them as out of sync; `install --no-save` installs from the same lock.
        say "npm install (clean, from package-lock.json) in $dir, on the host"
        rm -rf "$dir/node_modules"
        (cd "$dir" && npm install --no-save --no-audit --no-fund)
        printf '%s\n' "$sum" >"$stamp"
    fi
    say "checking the CLIs start on the host"
    local c home
    home=$(mktemp -d)
    for c in node codex claude gemini opencode qwen; do
        printf '    %-9s ' "$c"
        PATH=$PWD/$dir/node_modules/.bin:$PATH HOME=$home timeout 120 "$c" --version </dev/null 2>/dev/null | tail -n1
        [ "${PIPESTATUS[0]}" -eq 0 ] || die "$c --version failed"
    done
    rm -rf "$home"
    say "docker build $CLI_ENV_IMAGE (docker/cli-env/Dockerfile)"
    docker build --network host -t "$CLI_ENV_IMAGE" "$dir"
}

# The web UI's third-party files, from the npm registry at the versions of
# src/ui/package-lock.json. anser ships CommonJS; the browser loads ES
# modules, so its file is wrapped (unchanged inside) to export what it assigns
# to module.exports.
build_ui_assets() {
    command -v npm >/dev/null || die "npm not found (needed to fetch the UI's packages)"
    local dir=src/ui out=${UI_ASSETS_OUT:-src/ui/vendor} version
    say "npm ci in $dir (from package-lock.json)"
    (cd "$dir" && npm ci --no-audit --no-fund --ignore-scripts >/dev/null)
    version=$(node -p 'require("./src/ui/node_modules/anser/package.json").version')
    mkdir -p "$out"
    {
        printf '// anser %s (MIT, https://github.com/IonicaBizau/anser): lib/index.js from the npm\n' "$version"
        printf '// package, wrapped as an ES module by ./build.sh ui-assets. Do not edit.\n'
        printf 'const module = { exports: {} };\n'
        cat "$dir/node_modules/anser/lib/index.js"
        printf '\nexport default module.exports;\n'
    } >"$out/anser.js"
    cp "$dir/node_modules/anser/LICENSE" "$out/anser.LICENSE"
    say "wrote $out/anser.js"
}

build_test_cli() {
    need_docker
    say "docker build $TEST_CLI_IMAGE (docker/test-cli/Dockerfile)"
    docker build -f docker/test-cli/Dockerfile -t "$TEST_CLI_IMAGE" .
}

[ "$#" -gt 0 ] || set -- all
for target in "$@"; do
    case $target in
        all) build_binary && build_gateway && build_cli_env ;;
        binary) build_binary ;;
        gateway) build_binary && build_gateway ;;
        cli-env) build_cli_env ;;
        test-cli) build_test_cli ;;
        ui-assets) build_ui_assets ;;
        -h | --help | help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            die "unknown target: $target"
            ;;
    esac
done
say "done: $*"
