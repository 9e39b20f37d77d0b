"""Synthetic but realistic site reports, for the benchmark and load tests.

Shapes follow real OpenStack sites: a ladder of general-purpose flavors, some GPU flavors
(NVIDIA T4/V100/A100) on a fraction of sites, Infiniband on HPC-ish flavors, and images of
a few Linux distributions, some with CUDA.
"""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

DISTROS = [
    ("ubuntu", "20.04"),
    ("ubuntu", "22.04"),
    ("centos", "7"),
    ("rocky", "9"),
    ("debian", "12"),
]
GPUS = [("nvidia", "Tesla T4"), ("nvidia", "Tesla V100"), ("nvidia", "A100")]


def site_report(
    index: int,
    created: datetime,
    *,
    flavors: int = 50,
    images: int = 200,
    validity: int = 3600,
    tenants: tuple[str, ...] = ("vo.example.eu", "vo.access.eu"),
    seed: int = 0,
) -> dict[str, Any]:
    rnd = random.Random(seed * 1_000_003 + index)
    site_id = f"site-{index:04d}"
    gpu_site = index % 5 == 0
    gpu_vendor, gpu_model = GPUS[index % len(GPUS)]
    flavor_list = []
    for n in range(flavors):
        cpus = 2 ** (n % 7)
        gpus = (1 + n % 4) if gpu_site and n % 10 == 9 else 0
        flavor_list.append(
            {
                "id": f"fl-{n:03d}",
                "name": f"{'g' if gpus else 'm'}{n % 7}.x{n // 7}",
                "cpus": cpus,
                "ram_mb": cpus * 2048 * (1 + n // 7 % 3),
                "disk_gb": 20 * (1 + n % 5),
                "gpus": gpus,
                "gpu_vendor": gpu_vendor if gpus else "",
                "gpu_model": gpu_model if gpus else "",
                "infiniband": n % 13 == 0,
            }
        )
    image_list = []
    for n in range(images):
        distro, version = DISTROS[(n + index) % len(DISTROS)]
        cuda = n % 8 == 0
        image_list.append(
            {
                "id": f"{index:04d}{n:04d}-0000-4000-8000-{(index * 7919 + n):012x}",
                "name": f"{distro}-{version}-{'cuda-' if cuda else ''}{n:03d}",
                "os_type": "linux",
                "os_distribution": distro,
                "os_version": version,
                "architecture": "x86_64",
                "cuda": cuda,
                "cuda_version": "12.2" if cuda else "",
            }
        )
    quotas = [
        {
            "tenant": t,
            "project_id": f"{index:04d}{k:028x}",
            "limits": {"instances": 50, "cores": 400, "ram_mb": 1_048_576},
            "usage": {"instances": rnd.randint(0, 40), "cores": rnd.randint(0, 200)},
        }
        for k, t in enumerate(tenants)
    ]
    return {
        "schema_version": "1",
        "site": {"id": site_id, "name": f"Site {index}", "country": "EU"},
        "creationTime": created.isoformat(),
        "validity": validity,
        "agent": {"version": "bench"},
        "health": [{"component": "openstack", "healthy": True}],
        "services": [
            {
                "id": "nova",
                "type": "org.openstack.nova",
                "endpoint": f"https://keystone.{site_id}.example.org:5000/v3",
                "region": "RegionOne",
                "component": "openstack",
                "flavors": flavor_list,
                "images": image_list,
                "networks": [{"id": "public", "name": "public", "public": True}],
                "quotas": quotas,
            }
        ],
    }
