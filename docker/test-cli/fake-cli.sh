#!/bin/sh
# Stand-in for codex/claude/gemini/opencode/qwen in the cligate-test-cli image.
# It reports what the real CLI would have been given: its argv, the settings
# environment and the config files the entrypoint wrote, and the stdin it read,
# one fact per line, so the smoke test (../../test.sh) can assert exact lines.
#
# Knobs (request env): FAKE_SLEEP=N sleeps N seconds before exiting (for the
# stop test), FAKE_EXIT=N exits with N, FAKE_NO_STDIN=1 does not read stdin.
set -u
name=${0##*/}
echo "FAKE_CLI=$name"
echo "ARGC=$#"
echo "ARGV=$*"
i=0
for a do
    i=$((i + 1))
    echo "ARG$i=$a"
done
for v in CLI_PROVIDER_NAME LITELLM_BASE_URL LITELLM_API_KEY LITELLM_MODEL \
    ANTHROPIC_BASE_URL ANTHROPIC_AUTH_TOKEN ANTHROPIC_API_KEY ANTHROPIC_MODEL \
    ANTHROPIC_DEFAULT_HAIKU_MODEL GOOGLE_GEMINI_BASE_URL GEMINI_API_KEY \
    GEMINI_MODEL GEMINI_CLI_TRUST_WORKSPACE OPENAI_BASE_URL OPENAI_API_KEY \
    OPENAI_MODEL CODEX_HOME OPENCODE_CONFIG OPENCODE_DISABLE_AUTOUPDATE \
    HOME CLIGATE_SMOKE; do
    if eval "[ -n \"\${$v+set}\" ]"; then
        eval "echo \"ENV $v=\${$v}\""
    else
        echo "UNSET $v"
    fi
done
show() {
    if [ -f "$1" ]; then
        echo "FILE $1"
        cat "$1"
        echo "END FILE $1"
    else
        echo "NOFILE $1"
    fi
}
case $name in
    codex) show "${CODEX_HOME:-$HOME/.codex}/config.toml" ;;
    opencode) show "${OPENCODE_CONFIG:-$HOME/.config/opencode/opencode.json}" ;;
    gemini) show "${GEMINI_CLI_HOME:-$HOME}/.gemini/settings.json" ;;
esac
if [ "${FAKE_NO_STDIN:-0}" != 1 ]; then
    if [ -t 0 ]; then
        echo "STDIN_TTY=1"
    else
        echo "STDIN_TTY=0"
        printf 'STDIN=%s\n' "$(cat)"
    fi
fi
echo "fake-$name: this line goes to stderr" >&2
if [ -n "${FAKE_SLEEP:-}" ]; then
    echo "SLEEPING=${FAKE_SLEEP}"
    sleep "$FAKE_SLEEP"
fi
echo "DONE"
exit "${FAKE_EXIT:-0}"
