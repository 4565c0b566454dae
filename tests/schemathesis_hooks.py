"""Schemathesis hooks for tests/openapi-check.sh (loaded through SCHEMATHESIS_HOOKS).

- `ndjson_stream`: a check for what Schemathesis cannot validate by itself, the NDJSON body of a
  200 from POST /run: every line is a documented `Frame`, the first is the `session` frame (with
  the requested session id), the last is the only `exit` frame.
- `map_body`: most generated POST /run bodies name an allowed fixture CLI instead of a random
  string, so the fuzzed args, stdin and env really reach a running CLI (a random `cli` is only
  ever refused with 400). Only a string `cli` is replaced by another string, so a body that was
  generated to be invalid stays invalid.
"""

import json

import schemathesis
from jsonschema_rs import Draft7Validator  # a dependency of schemathesis

# The CLI_LIST of the gateway that tests/openapi-check.sh starts.
ALLOWED = ("args", "echo-stdin")


def _is_run(case):
    return case.method.upper() == "POST" and case.path == "/run"


@schemathesis.hook
def map_body(context, body):
    operation = context.operation
    if operation is None or operation.method.upper() != "POST" or operation.path != "/run":
        return body
    if isinstance(body, dict) and isinstance(body.get("cli"), str) and len(body["cli"]) % 3 != 0:
        return {**body, "cli": ALLOWED[len(body["cli"]) % len(ALLOWED)]}
    return body


@schemathesis.check
def ndjson_stream(ctx, response, case):
    """A 200 from POST /run is a stream of documented frames: session first, exactly one exit last."""
    if not _is_run(case) or response.status_code != 200:
        return None
    components = case.operation.schema.raw_schema["components"]
    validator = Draft7Validator({"$ref": "#/components/schemas/Frame", "components": components})
    text = response.content.decode("utf-8")
    assert text.endswith("\n"), f"the stream does not end with a newline: {text[-200:]!r}"
    frames = []
    for line in text[:-1].split("\n"):
        frame = json.loads(line)
        errors = [e.message for e in validator.iter_errors(frame)]
        assert not errors, f"frame {line!r} does not match the Frame schema: {errors}"
        frames.append(frame)
    assert frames and frames[0]["type"] == "session", f"the first frame is not a session frame: {frames[:1]}"
    assert frames[-1]["type"] == "exit", f"the last frame is not an exit frame: {frames[-1:]}"
    exits = sum(1 for f in frames if f["type"] == "exit")
    assert exits == 1, f"{exits} exit frames"
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("session_id"), str) and body["session_id"]:
        assert frames[0]["id"] == body["session_id"], f"session frame {frames[0]} for {body['session_id']!r}"
    return None
