#!/usr/bin/env bash
# Install what the vrouter netns tests and bench need, idempotently: userspace WireGuard
# (no kernel module here), wg, ip, ping, iperf3, nft (masquerade for site routers).
set -euo pipefail
need=()
for pair in wg:wireguard-tools wireguard-go:wireguard-go ip:iproute2 ping:iputils-ping \
  iperf3:iperf3 nft:nftables; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# wireguard-go needs the TUN device; containers sometimes lack the node.
if [ ! -c /dev/net/tun ]; then
  mkdir -p /dev/net
  mknod /dev/net/tun c 10 200
  chmod 0666 /dev/net/tun
fi
