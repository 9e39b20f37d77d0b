#!/usr/bin/env bash
# Install the real nginx (Debian's, with the auth_request module) used by the gateway's
# ext-auth tests, idempotently. Tests start their own nginx processes on loopback ports
# with a private config and prefix; nothing system-wide is started here.
set -euo pipefail
if ! command -v nginx >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
fi
# Debian's package may start its own server on :80 where an init system exists; the tests
# do not need it, and it must not hold ports other services expect.
if command -v systemctl >/dev/null && systemctl is-active --quiet nginx 2>/dev/null; then
  systemctl stop nginx || true
fi
nginx -V 2>&1 | grep -q -- --with-http_auth_request_module || {
  echo "nginx lacks the auth_request module" >&2; exit 1; }
