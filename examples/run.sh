#!/bin/sh
# Streams one run through a cligate gateway with curl and prints the NDJSON frames as they come.
#
#   examples/run.sh [CLI] [ARGS...] < prompt.txt
#
# CLIGATE_URL (default http://127.0.0.1:8000) and CLIGATE_TOKEN (optional bearer token) say where.
set -eu
url=${CLIGATE_URL:-http://127.0.0.1:8000}
cli=${1:-codex}
[ $# -gt 0 ] && shift
# Build the JSON body with python3 so that any prompt and argument is escaped correctly.
body=$(python3 -c 'import json, sys; print(json.dumps({"cli": sys.argv[1], "args": sys.argv[2:], "stdin": sys.stdin.read()}))' "$cli" "$@")

curl -sS --no-buffer "$url/clis" ${CLIGATE_TOKEN:+-H "Authorization: Bearer $CLIGATE_TOKEN"}
echo
printf '%s' "$body" | curl -sS --no-buffer -X POST "$url/run" \
  -H 'Content-Type: application/json' \
  ${CLIGATE_TOKEN:+-H "Authorization: Bearer $CLIGATE_TOKEN"} \
  --data-binary @-
