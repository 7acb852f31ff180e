#!/bin/sh
# Entrypoint of the lowtide image: `lowtide-entrypoint COMMAND [ARGS]` runs `lowtide COMMAND`.
#
# - platform: without LOWTIDE_TOKEN, uses the token kept in $LOWTIDE_HOME/token, generated
#   there on first start (LOWTIDE_HOME is a volume in compose, so the token survives
#   restarts). The token is never printed: the log says where to read it. The platform
#   process gets only its SHA-256 digest (LOWTIDE_TOKEN_SHA256), not the token.
# - platform, activator, agent: wait for LOWTIDE_REDIS_URL to answer PING (at most
#   LOWTIDE_REDIS_WAIT_S, default 60 s), since not every engine honours depends_on health
#   conditions; record the component's /healthz port for lowtide-healthcheck.
# - any other executable (sh, python3...) runs as is.
set -eu

command=${1:-}
case "$command" in
    platform) health_port=${LOWTIDE_PLATFORM_PORT:-8081} ;;
    activator) health_port=${LOWTIDE_ACTIVATOR_PORT:-8080} ;;
    agent) health_port=${LOWTIDE_AGENT_PORT:-8082} ;;
    ""|-*|up|deploy|ls|status|invoke|logs|delete|keys|access) exec lowtide "$@" ;;
    *) exec "$@" ;;
esac
echo "$health_port" >/tmp/lowtide-health-port

if [ "$command" = platform ] && [ -z "${LOWTIDE_TOKEN:-}" ]; then
    token_file="$LOWTIDE_HOME/token"
    if [ ! -s "$token_file" ]; then
        (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(32))' \
            >"$token_file.tmp") && mv "$token_file.tmp" "$token_file"
        echo "lowtide: generated an API token on first start, kept in $token_file"
    fi
    LOWTIDE_TOKEN=$(cat "$token_file")
    echo "lowtide: the API token is in $token_file; on the host:" \
        "export LOWTIDE_TOKEN=\$(docker compose exec platform cat $token_file)"
fi
if [ "$command" = platform ] && [ -n "${LOWTIDE_TOKEN:-}" ]; then
    LOWTIDE_TOKEN_SHA256=$(printf %s "$LOWTIDE_TOKEN" | python3 -c \
        'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
    export LOWTIDE_TOKEN_SHA256
    unset LOWTIDE_TOKEN
fi

if [ -n "${LOWTIDE_REDIS_URL:-}" ]; then
    python3 - <<'PY'
import os, sys, time
import redis
url, wait_s = os.environ["LOWTIDE_REDIS_URL"], float(os.environ.get("LOWTIDE_REDIS_WAIT_S") or 60)
deadline = time.monotonic() + wait_s
while True:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        break
    except redis.RedisError as exc:
        if time.monotonic() > deadline:
            sys.exit(f"lowtide: Redis at {url} did not answer within {wait_s:g} s: {exc}")
        time.sleep(0.5)
PY
fi
exec lowtide "$@"
