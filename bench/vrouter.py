"""vrouter benchmark: subnet allocation cost, and overlay throughput against a direct link.

1. Allocates N site subnets (default 10,000) in one overlay through the real controller on a
   real database (SQLite file by default, `--database-url` for PostgreSQL) and reports the
   time per allocation, plus last-1000 / first-1000 to show it does not grow with the pool.
2. Builds the netns lab (hub + two sites, real wireguard-go tunnels, real agents) and measures
   TCP throughput host A -> host B with iperf3 through the overlay, then between the same two
   namespaces joined directly by a veth: the ratio is overlay / direct, measured in one run,
   for hub-and-spoke (two tunnel hops through the hub) and full mesh (one hop).

Needs root, wireguard-go, wg, ip, nft and iperf3 (tests/infra/wireguard.sh). Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from hdc_common.db import create_engine, migrate, session_factory
from hdc_common.identity import Identity, InternalTokenSigner, generate_keypair
from hdc_vrouter.controller import Controller
from hdc_vrouter.netlab import ControllerThread, Lab, free_port, missing_tools
from hdc_vrouter.service import MIGRATIONS, build
from hdc_vrouter.settings import VRouterSettings

USER = Identity(subject="bench", issuer="https://bench")


def bench_allocations(count: int, database_url: str, data_dir: Path) -> dict:
    engine = create_engine(database_url)
    migrate(engine, MIGRATIONS)
    controller = Controller(session_factory(engine), VRouterSettings(data_dir=data_dir))
    overlay = controller.create_overlay(USER, name="bench", cidr="10.0.0.0/8", site_prefix=24)
    times = []
    for i in range(count):
        start = time.perf_counter()
        controller.add_site(USER, overlay["id"], name=f"site-{i}")
        times.append(time.perf_counter() - start)
    sites = controller.list_sites(USER, overlay["id"])
    subnets = {s["subnet"] for s in sites}
    assert len(subnets) == count + 1, "allocator handed out a duplicate subnet"
    controller.delete_overlay(USER, overlay["id"])
    engine.dispose()
    window = min(1000, max(1, count // 10))
    return {
        "allocations": count,
        "alloc_ms_mean": round(statistics.fmean(times) * 1000, 3),
        "alloc_ms_p50": round(statistics.median(times) * 1000, 3),
        "alloc_ms_p99": round(sorted(times)[int(len(times) * 0.99) - 1] * 1000, 3),
        "alloc_total_s": round(sum(times), 2),
        "alloc_last_vs_first_ratio": round(
            statistics.fmean(times[-window:]) / statistics.fmean(times[:window]), 3
        ),
    }


def iperf(lab: Lab, server_ip: str, seconds: int) -> float:
    """Bits per second received, host A -> host B."""
    server = lab.spawn("hb", ["iperf3", "-s", "-1", "-B", server_ip])
    try:
        deadline = time.monotonic() + 10
        while True:
            out = lab.run(
                "ha",
                "iperf3",
                "-c",
                server_ip,
                "-t",
                str(seconds),
                "-J",
                "--connect-timeout",
                "2000",
                timeout=seconds + 30,
            )
            report = json.loads(out.stdout) if out.stdout.strip().startswith("{") else {}
            received = report.get("end", {}).get("sum_received")
            if out.returncode == 0 and received:
                return float(received["bits_per_second"])
            if time.monotonic() > deadline:
                raise RuntimeError(f"iperf3 failed: {report.get('error') or out.stderr[-500:]}")
            time.sleep(0.3)
    finally:
        lab.stop_process(server)


def bench_throughput(seconds: int, rounds: int, topology: str, work: Path) -> dict:
    lab = Lab()
    try:
        lab.create(nat_site_b=False)
        host = lab.wan_ip("ctl")
        port = free_port(host)
        private, public = generate_keypair()
        settings = VRouterSettings(
            data_dir=work / "ctl", http_host=host, http_port=port, identity_public_key=public
        )
        with ControllerThread(build(settings), host, port) as ctl:
            headers = {"X-HDC-Identity": InternalTokenSigner(private, ttl_s=3600).sign(USER)}
            with httpx.Client(base_url=ctl.url + "/v1", headers=headers, timeout=10) as api:
                ov = api.post(
                    "/overlays", json={"name": "tp", "cidr": "10.200.0.0/16", "topology": topology}
                ).json()
                lab.spawn_agent(
                    "hub",
                    ctl.url,
                    ov["hub"]["enrolment_token"],
                    work / "hub",
                    endpoint=f"{lab.wan_ip('hub')}:51820",
                )
                for name in ("a", "b"):
                    site = api.post(
                        f"/overlays/{ov['id']}/sites",
                        json={"name": name, "private_ranges": [lab.lan_range(name)]},
                    ).json()
                    endpoint = (
                        f"{lab.wan_ip('r' + name)}:51820" if topology == "full-mesh" else None
                    )
                    lab.spawn_agent(
                        "r" + name,
                        ctl.url,
                        site["enrolment_token"],
                        work / name,
                        endpoint=endpoint,
                        interval=2,
                    )
                if not lab.wait_ping("ha", lab.host_ip("b"), 60):
                    raise RuntimeError("overlay did not come up")
                _, direct_b = lab.connect_hosts_directly()
                # Interleaved rounds, best of each: the machine is shared, so a single pair of
                # runs can land on either side of someone else's load spike.
                overlay_runs, direct_runs = [], []
                for _ in range(rounds):
                    direct_runs.append(iperf(lab, direct_b, seconds))
                    overlay_runs.append(iperf(lab, lab.host_ip("b"), seconds))
                overlay_bps, direct_bps = max(overlay_runs), max(direct_runs)
    finally:
        lab.destroy()
    return {
        "topology": topology,
        "overlay_gbps": round(overlay_bps / 1e9, 3),
        "direct_veth_gbps": round(direct_bps / 1e9, 3),
        "throughput_ratio_overlay_vs_direct": round(overlay_bps / direct_bps, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allocations", type=int, default=10_000)
    parser.add_argument("--database-url", default="", help="default: a fresh SQLite file")
    parser.add_argument("--seconds", type=int, default=4, help="iperf3 duration per measurement")
    parser.add_argument(
        "--rounds", type=int, default=2, help="interleaved overlay/direct rounds (best kept)"
    )
    parser.add_argument(
        "--topology", choices=["hub-and-spoke", "full-mesh", "both"], default="both"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hdc-vrouter-bench-") as tmp:
        work = Path(tmp)
        url = args.database_url or f"sqlite:///{work / 'alloc.db'}"
        result: dict = {"bench": "vrouter", "database": url.split(":", 1)[0]}
        result |= bench_allocations(args.allocations, url, work)
        missing = missing_tools() + (
            []
            if subprocess.run(["which", "iperf3"], capture_output=True).returncode == 0
            else ["iperf3"]
        )
        if missing:
            result["throughput_skipped"] = f"needs {', '.join(missing)}"
        else:
            result["iperf_seconds"] = args.seconds
            result["iperf_rounds"] = args.rounds
            topologies = (
                ["hub-and-spoke", "full-mesh"] if args.topology == "both" else [args.topology]
            )
            for topology in topologies:
                measured = bench_throughput(args.seconds, args.rounds, topology, work / topology)
                key = topology.replace("-", "_")
                result |= {f"{key}_{k}": v for k, v in measured.items() if k != "topology"}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
