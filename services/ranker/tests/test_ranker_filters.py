"""Each filter alone, then together, on hand-computed cases."""

from __future__ import annotations

from hdc.ranker.v1 import ranker_pb2 as pb


def codes(out, i):
    return [c for c, _f, _m in out.reasons(i)]


def test_site_filter_allowed_and_excluded(ranker, mk):
    req = mk.request(
        mk.candidate("a"),
        mk.candidate("b"),
        mk.candidate("c"),
        requirements=pb.Requirements(site_ids=["a", "b"], exclude_site_ids=["b"]),
        filters=["site"],
    )
    out = ranker.rank(req)
    assert out.rank.tolist() == [1, -1, -1]
    assert out.reasons(1)[0][2] == "site b is excluded by the request"
    assert "not among the allowed sites ['a', 'b']" in out.reasons(2)[0][2]


def test_service_type_filter(ranker, mk):
    req = mk.request(
        mk.candidate("a"),
        mk.candidate("b", service_type="kubernetes"),
        requirements=pb.Requirements(service_types=["org.openstack.nova"]),
        filters=["service_type"],
    )
    out = ranker.rank(req)
    assert out.rank.tolist() == [1, -1]
    assert codes(out, 1) == ["WRONG_SERVICE_TYPE"]


def test_health_filter_rejects_down_only(ranker, mk):
    down = mk.candidate("b", status=pb.STATUS_DOWN)
    down.health.add(component="openstack", healthy=False, message="keystone 503")
    req = mk.request(
        mk.candidate("a", status=pb.STATUS_DEGRADED),
        down,
        mk.candidate("c", status=pb.STATUS_UNSPECIFIED),
        filters=["health"],
    )
    out = ranker.rank(req)
    assert out.rank[1] == -1 and out.rank[0] > 0 and out.rank[2] > 0
    assert out.reasons(1) == [
        ("SITE_DOWN", "health", "site reports it is down (openstack: keystone 503)")
    ]


def test_freshness_filter(ranker, mk):
    now = mk.NOW
    expired = mk.candidate("expired")
    expired.freshness.valid_until.seconds = now - 1000
    old = mk.candidate("old", created=now - 4000)  # default max age 3600 s, no validity
    flagged = mk.candidate("flagged")
    flagged.freshness.stale = True
    by_validity = mk.candidate("by_validity", created=now - 4000)
    by_validity.freshness.validity_s = 5000  # valid until now + 1000: fresh
    unknown = mk.candidate("unknown")
    unknown.ClearField("freshness")  # nothing published: not rejected
    req = mk.request(expired, old, flagged, by_validity, unknown, filters=["freshness"])
    out = ranker.rank(req)
    assert out.rank.tolist()[:3] == [-1, -1, -1]
    assert out.rank[3] > 0 and out.rank[4] > 0
    assert out.reasons(0)[0][2] == "site data expired 1000 s ago"
    assert out.reasons(1)[0][2] == "site data is 4000 s old (max 3600 s)"
    assert out.reasons(2)[0][2] == "site data is flagged stale by the info provider"


def test_identity_provider_filter(ranker, mk):
    req = mk.request(
        mk.candidate("a", idps=["https://iam.example.org"]),
        mk.candidate("b", idps=["https://other.example.org/"]),
        mk.candidate("c"),  # publishes none: accepts any
        requirements=pb.Requirements(identity_provider="https://iam.example.org/"),
        filters=["identity_provider"],
    )
    out = ranker.rank(req)
    assert [r > 0 for r in out.rank] == [True, False, True]
    assert codes(out, 1) == ["IDP_NOT_SUPPORTED"]


def test_sla_filter_placement_policy(ranker, mk):
    now = mk.NOW
    slas = [
        pb.Sla(id="s1", site_id="a"),  # whole site
        pb.Sla(id="s2", site_id="b", service_id="b/nova"),  # not asked for
        pb.Sla(id="s1", site_id="c"),
    ]
    slas[2].end.seconds = now - 1  # expired
    req = mk.request(
        mk.candidate("a"),
        mk.candidate("b"),
        mk.candidate("c"),
        slas=slas,
        requirements=pb.Requirements(sla_ids=["s1"]),
        filters=["sla"],
    )
    out = ranker.rank(req)
    assert [r > 0 for r in out.rank] == [True, False, False]
    assert codes(out, 1) == ["NO_SLA"] and codes(out, 2) == ["NO_SLA"]


def test_flavor_filter_gpu_infiniband_size_and_choice(ranker, mk):
    gpu = dict(gpus=2, gpu_vendor="NVIDIA", gpu_model="Tesla V100-SXM2")
    req_spec = pb.Requirements(
        cpus=4,
        ram_mb=8192,
        infiniband=True,
        gpu=pb.GpuRequirement(count=2, vendor="nvidia", model="v100"),
    )
    cands = [
        # fits twice: the smaller one is chosen
        mk.candidate(
            "ok",
            flavors=[
                dict(id="big", cpus=16, ram_mb=65536, infiniband=True, **gpu),
                dict(id="small", cpus=4, ram_mb=8192, infiniband=True, **gpu),
                dict(id="nogpu", cpus=2, ram_mb=2048),
            ],
        ),
        mk.candidate(
            "amd",
            flavors=[dict(id="x", cpus=8, ram_mb=16384, gpus=2, gpu_vendor="amd", infiniband=True)],
        ),
        mk.candidate("noib", flavors=[dict(id="x", cpus=8, ram_mb=16384, **gpu)]),
        mk.candidate("tiny", flavors=[dict(id="x", cpus=2, ram_mb=4096, infiniband=True, **gpu)]),
        # GPU in one flavor, size in another: no single flavor fits
        mk.candidate(
            "split",
            flavors=[
                dict(id="g", cpus=1, ram_mb=1024, infiniband=True, **gpu),
                dict(id="c", cpus=8, ram_mb=16384, infiniband=True),
            ],
        ),
        mk.candidate("noflavors", flavors=[]),
    ]
    out = ranker.rank(mk.request(*cands, requirements=req_spec, filters=["flavor"]))
    assert out.rank.tolist() == [1, -1, -1, -1, -1, -1]
    assert out.ctx.table.flavors.message(out.chosen_flavor[0]).id == "small"
    assert codes(out, 1) == ["NO_GPU"]
    assert codes(out, 2) == ["NO_INFINIBAND"]
    assert codes(out, 3) == ["FLAVOR_TOO_SMALL"]
    assert out.reasons(3)[0][2] == (
        "needs 4 CPUs, 8192 MB RAM, 0 GB disk; largest flavor offers 2 CPUs, 4096 MB, 0 GB"
    )
    assert codes(out, 4) == ["NO_MATCHING_FLAVOR"]
    assert codes(out, 5) == ["NO_GPU"]
    assert "needs 2 nvidia v100 GPU(s)" in out.reasons(1)[0][2]


def test_flavor_filter_no_flavors_passes_size_only(ranker, mk):
    out = ranker.rank(
        mk.request(
            mk.candidate("k8s", flavors=[]),
            requirements=pb.Requirements(cpus=64),
            filters=["flavor"],
        )
    )
    assert out.rank.tolist() == [1]
    assert out.chosen_flavor.tolist() == [-1]


def test_image_filter_os_and_cuda(ranker, mk):
    want = pb.ImageRequirement(
        os_distribution="Ubuntu", os_version="22.04", min_cuda_version="11.8"
    )
    cands = [
        mk.candidate(
            "a",
            images=[
                dict(id="i1", os_distribution="ubuntu", os_version="22.04", cuda_version="12.1")
            ],
        ),
        mk.candidate(
            "b",
            images=[
                dict(id="i2", os_distribution="ubuntu", os_version="22.04", cuda_version="11.2")
            ],
        ),
        mk.candidate(
            "c",
            images=[
                dict(
                    id="i3",
                    os_distribution="centos",
                    os_version="7",
                    cuda=True,
                    cuda_version="12.0",
                )
            ],
        ),
        mk.candidate("d"),
    ]
    out = ranker.rank(
        mk.request(*cands, requirements=pb.Requirements(image=want), filters=["image"])
    )
    assert out.rank.tolist() == [1, -1, -1, -1]
    assert out.reasons(3) == [
        ("NO_IMAGE", "image", "no image matches Ubuntu 22.04 CUDA >= 11.8 (0 published)")
    ]


def test_quota_filter(ranker, mk):
    spec = pb.Requirements(cpus=2, instances=3, public_ips=2)
    cands = [
        mk.candidate("short", quota={"cores": (10, 5)}),  # needs 6 cores (3 x 2), 5 free
        mk.candidate("fits", quota={"cores": (10, 4), "floating_ips": (5, 3)}),
        mk.candidate("unlimited", quota={"cores": (-1, 500)}),
        mk.candidate("unknown"),
        mk.candidate("ips", quota={"floating_ips": (3, 2)}),  # needs 2, 1 free
        mk.candidate("zero", quota={"instances": (0, 0)}),  # an explicit 0 is a limit
    ]
    out = ranker.rank(mk.request(*cands, requirements=spec, filters=["quota"]))
    assert [r > 0 for r in out.rank] == [False, True, True, True, False, False]
    assert out.reasons(0)[0][2] == "quota exceeded (cores: needs 6, free 5 of 10)"
    assert out.reasons(4)[0][2] == "quota exceeded (floating_ips: needs 2, free 1 of 3)"
    assert out.reasons(5)[0][2] == "quota exceeded (instances: needs 3, free 0 of 0)"


def test_quota_uses_chosen_flavor(ranker, mk):
    # The request asks 1 CPU, but the smallest fitting flavor has 4: quota counts 4.
    c = mk.candidate("a", flavors=[dict(id="m4", cpus=4, ram_mb=4096)], quota={"cores": (6, 3)})
    out = ranker.rank(
        mk.request(c, requirements=pb.Requirements(cpus=1), filters=["flavor", "quota"])
    )
    assert out.reasons(0)[0][2] == "quota exceeded (cores: needs 4, free 3 of 6)"


def test_all_filters_combined_summary(ranker, mk):
    spec = pb.Requirements(cpus=2, gpu=pb.GpuRequirement(count=1), instances=1)
    gpu_flavor = [dict(id="g1", cpus=4, ram_mb=8192, gpus=1, gpu_vendor="nvidia")]
    stale = mk.candidate("stale-1", flavors=gpu_flavor, created=mk.NOW - 10_000)
    cands = [mk.candidate(f"cpu-{i}") for i in range(7)]  # 7 no GPU
    cands += [
        mk.candidate(f"full-{i}", flavors=gpu_flavor, quota={"cores": (4, 4)}) for i in range(3)
    ]
    cands += [stale, mk.candidate("stale-2", created=mk.NOW - 10_000)]  # second also lacks a GPU
    out = ranker.rank(mk.request(*cands, requirements=spec))
    assert out.summary() == "0/12 providers: 7 no GPU, 3 quota exceeded, 2 stale data"
    assert out.rejection_counts() == {"NO_GPU": 7, "QUOTA_EXCEEDED": 3, "STALE_DATA": 2}
    # every reason is listed, not only the first
    assert codes(out, 11) == ["STALE_DATA", "NO_GPU"]


def test_bulk_explanations_equal_single_ones(ranker, mk):
    spec = pb.Requirements(
        cpus=2, gpu=pb.GpuRequirement(count=2, vendor="nvidia"), instances=2, public_ips=1
    )
    cands = [
        mk.candidate("a", flavors=[dict(id="g", cpus=4, gpus=1, gpu_vendor="nvidia")]),
        mk.candidate("b", flavors=[]),
        mk.candidate(
            "c",
            flavors=[dict(id="g", cpus=4, gpus=2, gpu_vendor="nvidia")],
            quota={"cores": (4, 1), "floating_ips": (1, 1)},
        ),
        mk.candidate(
            "d", flavors=[dict(id="x", cpus=1), dict(id="y", cpus=2, gpus=1, gpu_vendor="amd")]
        ),
    ]
    out = ranker.rank(mk.request(*cands, requirements=spec))
    seen = 0
    for _f, r in out.rejections:
        idx, messages = r.messages()
        assert messages == [r.explain(i) for i in idx.tolist()]
        seen += idx.size
    assert seen == 4
    assert out.reasons(3)[0][2].endswith("(most GPUs in a flavor: 1)")
    assert out.reasons(2)[0][2] == (
        "quota exceeded (cores: needs 8, free 3 of 4; floating_ips: needs 1, free 0 of 1)"
    )
