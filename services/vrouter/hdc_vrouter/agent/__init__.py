"""`hdc-vrouter-agent`: the hub/site side that applies an overlay with wireguard-go, wg, ip, nft."""
