#!/bin/sh
# cligate CLI environment entrypoint (POSIX sh).
#
# The gateway runs:  docker run ... -e CLI_PROVIDER_NAME=<cli> \
#                      -e LITELLM_BASE_URL -e LITELLM_API_KEY -e LITELLM_MODEL \
#                      IMAGE <cli> <args...>
# This script maps the LITELLM_* settings onto the settings of the CLI named by
# the first argument (codex, claude, gemini, opencode, qwen), makes codex and
# opencode non-interactive when stdin is not a terminal, then execs the CLI.
# Anything else (`sh`, `bash`, `node`, ...) is exec'd unchanged.
# See README.md beside this file for the full mapping.
set -eu

log() { printf 'cligate-entrypoint: %s\n' "$*" >&2; }

# A value as the inside of a TOML/JSON basic string: backslash and double
# quote escaped, line breaks removed.
quote() { printf '%s' "$1" | tr -d '\r\n' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g'; }

if [ "$#" -eq 0 ]; then
    log "usage: <codex|claude|gemini|opencode|qwen> [args...]"
    exit 64
fi

cli=$1
shift
name=${cli##*/}
case $name in
    codex | claude | gemini | opencode | qwen) ;;
    *) exec "$cli" "$@" ;;
esac
if [ -n "${CLI_PROVIDER_NAME:-}" ] && [ "$CLI_PROVIDER_NAME" != "$name" ]; then
    log "warning: CLI_PROVIDER_NAME=$CLI_PROVIDER_NAME but running $name; configuring $name"
fi

base_url=${LITELLM_BASE_URL:-}
model=${LITELLM_MODEL:-}
# LITELLM_BASE_URL may be given with or without the /v1 suffix. The
# Anthropic and Gemini clients append their own /v1/messages or
# /v1beta/models/... to the proxy root; the OpenAI-compatible ones (codex,
# opencode, qwen) want the .../v1 base.
root_url=${base_url%/}
root_url=${root_url%/v1}
openai_url=$root_url/v1
# The settings files go under $HOME. Under another uid (the gateway's
# DOCKER_USER) the image's /home/cli is not writable: use a fresh one.
if [ -z "${HOME:-}" ] || [ ! -d "$HOME" ] || [ ! -w "$HOME" ]; then
    HOME=$(mktemp -d /tmp/home.XXXXXX)
fi
export HOME

# stdin not a terminal = the gateway (or a pipe) feeds the prompt.
if [ -t 0 ]; then interactive=1; else interactive=0; fi

# Drop every --model/-m flag (with its value) from the arguments given and
# leave the rest in $stripped, quoted for `eval "set -- $stripped"`.
strip_model_flags() {
    skip=0
    for arg do
        shift
        if [ "$skip" = 1 ]; then skip=0; continue; fi
        case $arg in
            --model | -m) skip=1; continue ;;
            --model=* | -m=*) continue ;;
        esac
        set -- "$@" "$arg"
    done
    stripped=
    for arg do
        stripped="$stripped '$(printf '%s' "$arg" | sed "s/'/'\\\\''/g")'"
    done
}

case $name in
codex)
    if [ -n "$base_url" ]; then
        CODEX_HOME=${CODEX_HOME:-$HOME/.codex}
        export CODEX_HOME
        mkdir -p "$CODEX_HOME"
        {
            echo '# written by the cligate entrypoint'
            echo 'model_provider = "litellm"'
            if [ -n "$model" ]; then echo "model = \"$(quote "$model")\""; fi
            echo
            echo '[model_providers.litellm]'
            echo 'name = "LiteLLM"'
            echo "base_url = \"$(quote "$openai_url")\""
            if [ -n "${LITELLM_API_KEY:-}" ]; then echo 'env_key = "LITELLM_API_KEY"'; fi
            echo 'wire_api = "responses"'
        } >"$CODEX_HOME/config.toml"
    fi
    if [ "$interactive" = 0 ]; then
        case ${1:-} in
            # Help/version and codex's own subcommands pass through.
            -h | --help | -V | --version | help | review | login | logout | mcp | \
                plugin | app-server | remote-control | completion | update | doctor | \
                sandbox | debug | apply | a | resume | queue | archive | delete | \
                migrate-rollouts | migrate-nfs-db | unarchive | fork | cloud | \
                exec-server | features | agents | mcp-server | proto)
                ;;
            exec | e)
                # Explicit exec: make sure it runs outside a git repository.
                sub=$1
                shift
                case " $* " in
                    *" --skip-git-repo-check "*) set -- "$sub" "$@" ;;
                    *) set -- "$sub" --skip-git-repo-check "$@" ;;
                esac
                ;;
            *)
                # `codex exec` prints only the final message on stdout
                # (progress goes to stderr) and reads the prompt from stdin.
                set -- exec --skip-git-repo-check "$@"
                ;;
        esac
    fi
    ;;

claude)
    if [ -n "$base_url" ]; then
        export ANTHROPIC_BASE_URL="$root_url"
    fi
    if [ -n "${LITELLM_API_KEY:-}" ]; then
        # Sent as "Authorization: Bearer", which LiteLLM accepts. Not also
        # ANTHROPIC_API_KEY: with both set Claude Code reports an auth conflict.
        export ANTHROPIC_AUTH_TOKEN="$LITELLM_API_KEY"
    fi
    if [ -n "$model" ]; then
        export ANTHROPIC_MODEL="$model"
        # Claude Code's background "small/fast" calls go to the same model,
        # so a LiteLLM without a haiku alias still works.
        : "${ANTHROPIC_DEFAULT_HAIKU_MODEL:=$model}"
        export ANTHROPIC_DEFAULT_HAIKU_MODEL
    fi
    : "${CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC:=1}"
    : "${DISABLE_AUTOUPDATER:=1}"
    export CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC DISABLE_AUTOUPDATER
    # With stdin not a terminal Claude Code runs headless by itself (as -p).
    ;;

gemini)
    if [ -n "$base_url" ]; then export GOOGLE_GEMINI_BASE_URL="$root_url"; fi
    if [ -n "${LITELLM_API_KEY:-}" ]; then export GEMINI_API_KEY="$LITELLM_API_KEY"; fi
    if [ -n "$model" ]; then export GEMINI_MODEL="$model"; fi
    # Headless gemini picks its auth type from the environment, and with
    # GOOGLE_GEMINI_BASE_URL set that is "gateway", which its non-interactive
    # check rejects ("Invalid auth method selected."). Select the API-key
    # type explicitly; it still honours GOOGLE_GEMINI_BASE_URL.
    gemini_dir=${GEMINI_CLI_HOME:-$HOME}/.gemini
    # The container is the sandbox: trust its working directory (headless
    # gemini refuses untrusted folders otherwise).
    : "${GEMINI_CLI_TRUST_WORKSPACE:=true}"
    export GEMINI_CLI_TRUST_WORKSPACE
    if [ -n "$base_url" ] && [ ! -e "$gemini_dir/settings.json" ]; then
        mkdir -p "$gemini_dir"
        cat >"$gemini_dir/settings.json" <<'EOF'
{
  "security": { "auth": { "selectedType": "gemini-api-key" } },
  "privacy": { "usageStatisticsEnabled": false }
}
EOF
    fi
    ;;

opencode)
    run=0
    if [ "$interactive" = 0 ]; then
        case ${1:-} in
            -h | --help | -v | --version | completion | acp | mcp | attach | debug | \
                providers | auth | agent | upgrade | uninstall | serve | web | models | \
                stats | export | import | github | pr | session | plugin | plug | db)
                ;;
            run) shift; run=1 ;;
            *) run=1 ;;
        esac
    fi
    if [ -n "$base_url" ]; then
        conf_dir=${XDG_CONFIG_HOME:-$HOME/.config}/opencode
        mkdir -p "$conf_dir"
        OPENCODE_CONFIG=$conf_dir/opencode.json
        export OPENCODE_CONFIG
        {
            echo '{'
            # shellcheck disable=SC2016
            echo '  "$schema": "https://opencode.ai/config.json",'
            echo '  "autoupdate": false,'
            echo '  "share": "disabled",'
            if [ -n "$model" ]; then echo "  \"model\": \"litellm/$(quote "$model")\","; fi
            echo '  "provider": {'
            echo '    "litellm": {'
            echo '      "npm": "@ai-sdk/openai-compatible",'
            echo '      "name": "LiteLLM",'
            echo '      "options": {'
            echo "        \"baseURL\": \"$(quote "$openai_url")\","
            # opencode substitutes {env:NAME} itself: the key is not written to disk.
            echo '        "apiKey": "{env:LITELLM_API_KEY}"'
            echo '      },'
            echo '      "models": {'
            if [ -n "$model" ]; then
                echo "        \"$(quote "$model")\": { \"name\": \"$(quote "$model")\" }"
            fi
            echo '      }'
            echo '    }'
            echo '  }'
            echo '}'
        } >"$OPENCODE_CONFIG"
    fi
    : "${OPENCODE_DISABLE_AUTOUPDATE:=1}"
    : "${OPENCODE_DISABLE_MODELS_FETCH:=1}"
    export OPENCODE_DISABLE_AUTOUPDATE OPENCODE_DISABLE_MODELS_FETCH
    if [ "$run" = 1 ]; then
        if [ -n "$base_url" ] && [ -n "$model" ]; then
            # The gateway already strips --model/-m for opencode; strip again so
            # exactly one model flag reaches opencode.
            strip_model_flags "$@"
            eval "set -- $stripped"
            set -- run --model "litellm/$model" "$@"
        else
            set -- run "$@"
        fi
    fi
    ;;

qwen)
    if [ -n "$base_url" ]; then export OPENAI_BASE_URL="$openai_url"; fi
    if [ -n "${LITELLM_API_KEY:-}" ]; then export OPENAI_API_KEY="$LITELLM_API_KEY"; fi
    if [ -n "$model" ]; then export OPENAI_MODEL="$model"; fi
    ;;
esac

exec "$cli" "$@"
