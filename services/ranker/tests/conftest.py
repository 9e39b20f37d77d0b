"""Builders for ranker tests: requests are protobuf messages, as the orchestrator sends them."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest
from hdc.ranker.v1 import ranker_pb2 as pb
from hdc_common.identity import (
    GRPC_METADATA_KEY,
    HEADER,
    Identity,
    InternalTokenSigner,
    InternalTokenVerifier,
    generate_keypair,
)
from hdc_ranker.engine import Defaults, Ranker
from hdc_ranker.plugins import default_registry
from hdc_ranker.response import warm_up

NOW = 1_700_000_000


def candidate(site: str, service: str = "", **kw: Any) -> pb.Candidate:
    """A healthy, fresh OpenStack candidate with one 2-CPU flavor, unless told otherwise."""
    c = pb.Candidate(
        site_id=site,
        service_id=service or f"{site}/nova",
        service_type=kw.pop("service_type", "org.openstack.nova"),
        status=kw.pop("status", pb.STATUS_UP),
    )
    flavors = kw.pop("flavors", [dict(id="m1", cpus=2, ram_mb=4096, disk_gb=20)])
    for f in flavors:
        c.flavors.add(**f)
    c.freshness.creation_time.seconds = kw.pop("created", NOW - 60)
    for key, value in kw.items():
        if key == "quota":
            q = c.quotas.add()
            for res, (limit, used) in value.items():
                if limit is not None:
                    setattr(q.limits, res, limit)
                setattr(q.usage, res, used)
        elif key == "images":
            for img in value:
                c.images.add(**img)
        elif key == "idps":
            for issuer in value:
                c.identity_providers.add(issuer=issuer)
        else:
            setattr(c, key, value)
    return c


def random_request(seed: int, n: int = 40) -> pb.RankRequest:
    """Candidates with random values in every field the decoder reads (and some it skips)."""
    rng = random.Random(seed)
    req = pb.RankRequest()
    req.requirements.tenant = "vo"
    words = ["", "a", "nvidia", "NVIDIA", "Tesla V100", "ünïcødé-site", "x" * 200]
    for i in range(n):
        c = req.candidates.add(
            site_id=f"site-{rng.randrange(7)}-{rng.choice(words)}", service_id=f"svc-{i}"
        )
        c.service_type = rng.choice(words)
        c.status = rng.randrange(4)
        for _ in range(rng.randrange(4)):
            c.flavors.add(
                id=rng.choice(words),
                name=rng.choice(words),
                cpus=rng.randrange(2**32),
                ram_mb=rng.randrange(2**40),
                disk_gb=rng.randrange(100),
                gpus=rng.randrange(3),
                gpu_vendor=rng.choice(words),
                gpu_model=rng.choice(words),
                infiniband=rng.random() < 0.5,
            )
            if rng.random() < 0.3:
                c.flavors[-1].cost_per_hour = rng.random()
            c.flavors[-1].properties["k"] = "v"  # a field the decoder skips
        for _ in range(rng.randrange(3)):
            c.images.add(
                id=rng.choice(words),
                os_distribution=rng.choice(["ubuntu", "Ubuntu", "centos"]),
                cuda=rng.random() < 0.5,
                cuda_version=rng.choice(["", "11.8", "12.1", "9"]),
            )
        for _ in range(rng.randrange(3)):
            q = c.quotas.add(tenant=rng.choice(["vo", "other"]))
            if rng.random() < 0.8:
                q.limits.cores = rng.choice([-1, 0, 10, 2**40])
            q.limits.instances = rng.randrange(20)
            q.usage.cores = rng.randrange(10)
        for _ in range(rng.randrange(3)):
            c.identity_providers.add(
                issuer=rng.choice(["https://iam/", "https://iam", "x"]), name="n"
            )
        if rng.random() < 0.7:
            c.freshness.creation_time.seconds = rng.randrange(1, 2**33)
            c.freshness.creation_time.nanos = rng.randrange(10**9)
        if rng.random() < 0.5:
            c.freshness.valid_until.seconds = rng.randrange(1, 2**33)
        c.freshness.validity_s = rng.randrange(3)
        c.freshness.stale = rng.random() < 0.2
        if rng.random() < 0.5:
            c.cost.per_cpu_hour = rng.random()
        if rng.random() < 0.5:
            c.cost_per_hour = rng.random()
        c.public_cloud = rng.random() < 0.5
        c.properties["ignored"] = "yes"
    return req


def request(*cands: pb.Candidate, **kw: Any) -> pb.RankRequest:
    req = pb.RankRequest(candidates=list(cands))
    req.options.now.seconds = NOW
    for key, value in kw.items():
        if key == "filters":
            req.options.filters.extend(value)
        elif key == "scorers":
            req.options.scorers.extend(value)
        elif key == "weights":
            req.options.weights.update(value)
        elif key == "seed":
            req.options.seed = value
        elif key == "requirements":
            req.requirements.CopyFrom(value)
        else:
            getattr(req, key).extend(value)
    return req


@pytest.fixture
def mk() -> SimpleNamespace:
    return SimpleNamespace(
        candidate=candidate, request=request, random_request=random_request, NOW=NOW
    )


@pytest.fixture(scope="session", autouse=True)
def _compiled() -> None:
    """Compile the ranker's numba functions once per test session (seconds, not per test)."""
    warm_up()


@pytest.fixture
def ranker() -> Ranker:
    return Ranker(default_registry(entry_points_too=False), Defaults())


class GatewayKeys:
    """What the gateway holds (the signing key) and what the ranker trusts (the public key)."""

    def __init__(self) -> None:
        self.private, self.public = generate_keypair()
        self._signer = InternalTokenSigner(self.private, ttl_s=300)
        self.caller = Identity(subject="orchestrator-test", issuer="https://iam.test/")

    def token(self) -> str:
        return self._signer.sign(self.caller)

    def headers(self) -> dict[str, str]:
        return {HEADER: self.token()}

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((GRPC_METADATA_KEY, self.token()),)

    def verifier(self) -> InternalTokenVerifier:
        return InternalTokenVerifier(self.public)


@pytest.fixture(scope="session")
def gateway() -> GatewayKeys:
    return GatewayKeys()
