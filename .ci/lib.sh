# Shared by the project's shell scripts (sourced, not run): messages, root, the machine's Debian
# mirror, and the one list of what ./test.sh needs installed, which ./test.sh checks and .ci/run
# installs.
#
# A script sets SCRIPT (its name in messages) before sourcing this file.
# shellcheck shell=bash

SCRIPT=${SCRIPT:-${0##*/}}

# Seconds are counted from the outermost script's start (exported to the scripts it runs), so a
# log shows where the time of a whole .ci/run went.
CLIGATE_SCRIPT_START=${CLIGATE_SCRIPT_START:-$(date +%s)}
export CLIGATE_SCRIPT_START
say() { printf '==> %s: [%ss] %s\n' "$SCRIPT" "$(($(date +%s) - CLIGATE_SCRIPT_START))" "$*"; }
die() {
    printf '%s: FAIL: %s\n' "$SCRIPT" "$*" >&2
    exit 1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root for: $*"
    fi
}

# ------------------------------------------------------------- the Debian mirror
# The images build from Debian packages; which mirror serves them is this machine's business,
# never written in the repository. $DEBIAN_MIRROR wins; else, on a Debian host, the first
# non-security http(s) source of apt (deb822 *.sources files, then one-line *.list files). On
# any other host (Ubuntu's mirrors serve no Debian packages) DEBIAN_MIRROR must be set.

# Prints the mirror, or nothing (status 1) when none can be found; debian_mirror_problem says why.
debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then
        printf '%s\n' "$DEBIAN_MIRROR"
        return 0
    fi
    [ "$(os_id)" = debian ] || return 1
    local uri
    uri=$(apt_sources_uri)
    [ -n "$uri" ] || return 1
    printf '%s\n' "$uri"
}

debian_mirror_problem() {
    local id
    id=$(os_id)
    if [ "$id" != debian ]; then
        printf 'this host is not Debian (ID=%s in /etc/os-release), so its apt mirror serves no Debian packages: set DEBIAN_MIRROR to a Debian mirror URL (it becomes the DEBIAN_MIRROR build argument of docker/Dockerfile)\n' "${id:-unknown}"
    else
        printf 'no http(s) Debian source in /etc/apt/sources.list.d/*.sources, /etc/apt/sources.list or /etc/apt/sources.list.d/*.list: set DEBIAN_MIRROR to a Debian mirror URL (the DEBIAN_MIRROR build argument of docker/Dockerfile)\n'
    fi
}

# OS_RELEASE and APT_ETC name other files than /etc/os-release and /etc/apt (for trying this out).
os_id() {
    local file=${OS_RELEASE:-/etc/os-release}
    [ -r "$file" ] || return 0
    # shellcheck disable=SC1090
    (. "$file" && printf '%s\n' "${ID:-}")
}

apt_sources_uri() {
    local f
    # deb822: stanzas of "Key: value" lines separated by blank lines.
    for f in "${APT_ETC:-/etc/apt}"/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && enabled != "no" && suites !~ /-security/) {
                    n = split(uris, u, " ")
                    for (i = 1; i <= n; i++)
                        if (u[i] ~ /^https?:\/\// && u[i] !~ /security/) { print u[i]; found = 1; exit }
                }
                types = ""; uris = ""; suites = ""; enabled = ""
            }
            /^[ \t]*$/ { flush(); next }
            /^#/ { next }
            tolower($1) == "types:" { $1 = ""; types = $0 " " }
            tolower($1) == "uris:" { $1 = ""; uris = $0 }
            tolower($1) == "suites:" { $1 = ""; suites = $0 }
            tolower($1) == "enabled:" { enabled = tolower($2) }
            END { if (!found) flush() }
        ' "$f" | head -n1
    done | head -n1 | grep . && return 0
    # One-line style: deb [options] URI suite components...
    for f in "${APT_ETC:-/etc/apt}"/sources.list "${APT_ETC:-/etc/apt}"/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        sed -E 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && $2 ~ /^https?:\/\// && $2 !~ /security/ && $3 !~ /-security/ { print $2; exit }'
    done | head -n1
}

# A TCP port free on 127.0.0.1 right now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --------------------------------------------------------------- prerequisites
# One entry per thing ./test.sh needs: "what|Debian package|check command". The check runs in a
# subshell with output discarded. An entry whose package is "rustup component ..." or
# "rustup" is not an apt package.

RUST_VERSION=$(sed -nE 's/^rust-version *= *"([^"]+)".*/\1/p' "$(dirname "${BASH_SOURCE[0]}")/../Cargo.toml")

cargo_is_recent() {
    local have
    have=$(cargo --version 2>/dev/null | awk '{ print $2 }')
    [ -n "$have" ] && [ "$(printf '%s\n%s\n' "$RUST_VERSION" "$have" | sort -V | head -n1)" = "$RUST_VERSION" ]
}

static_busybox() {
    [ -x /bin/busybox ] || return 1
    # A dynamic binary names its loader (/lib64/ld-linux-x86-64.so.2, ...) near its start.
    ! LC_ALL=C head -c 4096 /bin/busybox | tr -d '\0' | grep -qa '/ld-'
}

# git, and the servers tests/workspace.rs runs its remotes with (both in Debian's git package).
git_with_servers() {
    command -v git >/dev/null 2>&1 || return 1
    local exec_path
    exec_path=$(git --exec-path) || return 1
    [ -x "$exec_path/git-daemon" ] && [ -x "$exec_path/git-http-backend" ]
}

postgres_server() {
    local p
    for p in initdb pg_ctl; do
        command -v "$p" >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/$p" >/dev/null || return 1
    done
}

docker_compose() { docker compose version || docker-compose version; }

PREREQUISITES=(
    "cargo $RUST_VERSION or newer|rustup|cargo_is_recent"
    "rustfmt|rustup component add rustfmt|cargo fmt --version"
    "clippy|rustup component add clippy|cargo clippy --version"
    "a C compiler (cc)|gcc|command -v cc"
    "git with git daemon and git http-backend|git|git_with_servers"
    "node|nodejs|command -v node"
    "npm|npm|command -v npm"
    "chromium (/usr/bin/chromium, for the web UI's browser tests)|chromium|test -x \"${CHROMIUM:-/usr/bin/chromium}\""
    "python3|python3|command -v python3"
    "python3 venv|python3-venv|python3 -c 'import ensurepip, venv'"
    "static /bin/busybox|busybox-static|static_busybox"
    "curl|curl|command -v curl"
    "PostgreSQL server programs (initdb, pg_ctl)|postgresql|postgres_server"
    "docker client|docker.io|command -v docker"
    "docker compose or docker-compose|docker-compose|docker_compose"
)

# Prints "what (package)" for each missing prerequisite, one a line.
missing_prerequisites() {
    local entry what package check
    for entry in "${PREREQUISITES[@]}"; do
        IFS='|' read -r what package check <<<"$entry"
        (eval "$check") >/dev/null 2>&1 || printf '%s (%s)\n' "$what" "$package"
    done
}

# Prints the apt packages of the missing prerequisites, one a line.
missing_packages() {
    local entry what package check
    for entry in "${PREREQUISITES[@]}"; do
        IFS='|' read -r what package check <<<"$entry"
        case $package in rustup*) continue ;; esac
        (eval "$check") >/dev/null 2>&1 || printf '%s\n' "$package"
    done
}
