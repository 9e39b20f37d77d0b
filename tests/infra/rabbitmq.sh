#!/usr/bin/env bash
# Start the real RabbitMQ used by tests and distributed mode, idempotently.
set -euo pipefail
command -v rabbitmq-server >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null; }
if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
  rabbitmq-plugins enable --offline rabbitmq_management >/dev/null
  rabbitmq-server -detached
  # -detached returns before the node registers with epmd; until it does, the
  # CLI reports "not running at all" and await_startup gives up at once.
  for _ in $(seq 1 120); do
    rabbitmq-diagnostics -q ping >/dev/null 2>&1 && break
    sleep 1
  done
fi
# ping answers before the rabbit app runs; await_startup waits for the app itself.
rabbitmqctl await_startup --timeout 120 >/dev/null
# Tests create one vhost each through the management API, as this user.
rabbitmqctl list_users -q | grep -q '^hdc' || {
  rabbitmqctl add_user hdc hdc >/dev/null
  rabbitmqctl set_user_tags hdc administrator >/dev/null
  rabbitmqctl set_permissions -p / hdc '.*' '.*' '.*' >/dev/null
}
for _ in $(seq 1 30); do
  curl -fsS -u hdc:hdc http://127.0.0.1:15672/api/overview >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "RabbitMQ management API did not come up on :15672" >&2; exit 1
