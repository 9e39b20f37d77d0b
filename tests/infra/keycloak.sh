#!/usr/bin/env bash
# Start the real Keycloak used by the gateway tests (and distributed mode), idempotently.
#
# The distribution comes from Maven Central and is cached outside the repo under
# ${HDC_CACHE:-$HOME/.cache/hdc}. It is augmented once with `kc.sh build` so every later
# start is an `--optimized` one (much faster than start-dev, which re-augments each time).
# A fresh start wipes the embedded H2 database and imports tests/keycloak/*.json, so each
# test session begins from the committed realms; a Keycloak already answering is reused.
set -euo pipefail

KC_VERSION="${HDC_KEYCLOAK_VERSION:-26.5.6}"
KC_PORT="${HDC_KEYCLOAK_PORT:-18080}"
KC_MGMT_PORT="${HDC_KEYCLOAK_MGMT_PORT:-19000}"
CACHE="${HDC_CACHE:-$HOME/.cache/hdc}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KC_HOME="$CACHE/keycloak/keycloak-$KC_VERSION"
READY_URL="http://127.0.0.1:$KC_MGMT_PORT/health/ready"

ready() { curl -fsS -m 2 "$READY_URL" >/dev/null 2>&1; }
realms_sha() { cat "$REPO"/tests/keycloak/*.json | sha256sum | cut -c1-16; }
PID_FILE="$CACHE/keycloak/keycloak.pid"
SHA_FILE="$CACHE/keycloak/realms.sha"
if ready; then
  # Reuse the running Keycloak unless the committed realms changed since it imported them;
  # then stop the one this script started (by its pid) and start afresh.
  if [[ ! -f "$SHA_FILE" || "$(cat "$SHA_FILE")" == "$(realms_sha)" || ! -f "$PID_FILE" ]]; then
    exit 0
  fi
  old_pid="$(cat "$PID_FILE")"
  # Only if that pid still is our Keycloak (pids get reused after a reboot).
  if grep -q "$KC_HOME" "/proc/$old_pid/cmdline" 2>/dev/null; then
    kill "$old_pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$old_pid" 2>/dev/null || break; sleep 0.5; done
  else
    exit 0  # a Keycloak this script did not start answers: leave it alone
  fi
fi

# Keycloak 26 needs Java 21+; Debian 12 ships 17, so look for a newer JDK next to it.
if [[ -z "${KC_JAVA_HOME:-}" ]]; then
  for jdk in /usr/lib/jvm/temurin-25-jdk-amd64 /usr/lib/jvm/*; do
    [[ -x "$jdk/bin/java" ]] || continue
    major="$("$jdk/bin/java" -XshowSettings:properties -version 2>&1 | sed -n 's/.*java.specification.version = \([0-9]*\).*/\1/p')"
    if [[ -n "$major" && "$major" -ge 21 ]]; then KC_JAVA_HOME="$jdk"; break; fi
  done
fi
[[ -n "${KC_JAVA_HOME:-}" ]] || { echo "keycloak.sh: no JDK >= 21 under /usr/lib/jvm" >&2; exit 1; }
export JAVA_HOME="$KC_JAVA_HOME"

if [[ ! -x "$KC_HOME/bin/kc.sh" ]]; then
  mkdir -p "$CACHE/keycloak"
  zip="$CACHE/keycloak/keycloak-quarkus-dist-$KC_VERSION.zip"
  if [[ ! -s "$zip" ]]; then
    command -v mvn >/dev/null || {
      apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven >/dev/null; }
    mvn -q -B dependency:copy -Dartifact="org.keycloak:keycloak-quarkus-dist:$KC_VERSION:zip" \
      -DoutputDirectory="$CACHE/keycloak" >&2
  fi
  command -v unzip >/dev/null || {
    apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq unzip >/dev/null; }
  tmp="$(mktemp -d "$CACHE/keycloak/unzip.XXXXXX")"
  (cd "$tmp" && unzip -q "$zip")
  mv "$tmp/keycloak-$KC_VERSION" "$KC_HOME"
  rmdir "$tmp"
fi

# Build-time options; re-augment only when they change.
BUILD_OPTS=(--db=dev-file --cache=local --health-enabled=true)
stamp="$KC_HOME/.hdc-build"
if [[ "$(cat "$stamp" 2>/dev/null)" != "${BUILD_OPTS[*]}" ]]; then
  "$KC_HOME/bin/kc.sh" build "${BUILD_OPTS[@]}" >"$KC_HOME/hdc-build.log" 2>&1 \
    || { tail -30 "$KC_HOME/hdc-build.log" >&2; exit 1; }
  echo "${BUILD_OPTS[*]}" >"$stamp"
fi

# Another caller may be starting it right now; only one start proceeds.
exec 9>"$CACHE/keycloak/.start.lock"
flock 9
if ! ready && ! curl -fsS -m 2 "http://127.0.0.1:$KC_PORT/" >/dev/null 2>&1; then
  rm -rf "$KC_HOME/data/h2" "$KC_HOME/data/import"
  mkdir -p "$KC_HOME/data/import"
  cp "$REPO"/tests/keycloak/*.json "$KC_HOME/data/import/"
  # Heap is kept small: the build machine has 2 cores and is shared.
  JAVA_OPTS_KC_HEAP="-Xms64m -Xmx640m" \
  KC_BOOTSTRAP_ADMIN_USERNAME="${HDC_KEYCLOAK_ADMIN:-admin}" \
  KC_BOOTSTRAP_ADMIN_PASSWORD="${HDC_KEYCLOAK_ADMIN_PASSWORD:-admin}" \
    setsid nohup "$KC_HOME/bin/kc.sh" start --optimized --import-realm \
      --http-enabled=true --http-host=127.0.0.1 --http-port="$KC_PORT" \
      --hostname="http://127.0.0.1:$KC_PORT" --hostname-strict=false \
      --http-management-port="$KC_MGMT_PORT" \
      >"$KC_HOME/hdc-keycloak.log" 2>&1 </dev/null &
  echo $! >"$PID_FILE"
  realms_sha >"$SHA_FILE"
fi
for _ in $(seq 1 240); do
  ready && exit 0
  sleep 1
done
echo "Keycloak did not become ready on $READY_URL; log: $KC_HOME/hdc-keycloak.log" >&2
tail -30 "$KC_HOME/hdc-keycloak.log" >&2
exit 1
