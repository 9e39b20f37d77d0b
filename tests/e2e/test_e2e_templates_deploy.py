"""Every template of the library deploys and undeploys cleanly, through the real
orchestrator -> infoprovider/ranker -> im chain, on sites registered by their info agents
(tests/e2e/template_sites.py): each test POSTs the template with its inputs, follows the
deployment's events to CREATE_COMPLETE, checks that the site's substrate holds what the
template asked for and that the outputs say where it is, then DELETEs it and checks that the
substrate is empty again and the deployment is gone (404).

`deep-oc-model.yaml` is deployed, called and deleted on the embedded local site by
tests/e2e/test_e2e_main_job.py; every other template is deployed here."""

from __future__ import annotations

import email
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hdc_vrouter.enrolment import TOKEN_FILE
from hdc_vrouter.wgkeys import generate_keypair as wg_keypair

from tests.e2e.template_sites import TEMPLATES, Platform, start_platform, wait_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """The services and the five sites, started once for the module (not `hdc up`)."""
    yield from start_platform(tmp_path_factory.mktemp("templates"))


def deployed(chain: Platform, template: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Create, follow the events to the end, return the deployment (CREATE_COMPLETE)."""
    uuid = chain.create(template, parameters)
    events, status = chain.follow(uuid)
    d = chain.deployment(uuid).json()
    assert status == d["status"] == "CREATE_COMPLETE", (d, events, chain.logs())
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "status" and "placement" in kinds, events
    assert (
        kinds.index("placement") < kinds.index("attempt.started") < kinds.index("attempt.succeeded")
    ), events
    return d


def test_every_template_of_the_library_is_deployed_by_a_test() -> None:
    here = Path(__file__).read_text()
    root = Path(__file__).parents[2]
    for template in sorted(p.name for p in TEMPLATES.glob("*.yaml")):
        if template == "deep-oc-model.yaml":
            # the catalog's digits model is this template; the main job deploys it
            entry = json.loads(
                (root / "services/serving/hdc_serving/models/digits.catalog.json").read_text()
            )
            assert entry["tosca_template"] == f"templates/{template}"
            main_job = (root / "tests/e2e/test_e2e_main_job.py").read_text()
            assert '"model", "deploy", "digits"' in main_job
        else:
            assert f'"{template}"' in here, f"{template} has no deploy test"


def test_model_on_kubernetes(chain: Platform) -> None:
    k8s = chain.sites.k8s
    d = deployed(
        chain, "model-kubernetes.yaml", {"site": "k8s", "model": "digits", "mem_size": "2 GB"}
    )
    assert d["cloudProviderName"] == "k8s"

    (dep,) = k8s.of_kind("deployments")
    (svc,) = k8s.of_kind("services")
    assert dep["metadata"]["namespace"] == svc["metadata"]["namespace"] == "ml"
    assert dep["metadata"]["labels"]["app.kubernetes.io/name"] == "digits"
    assert dep["status"]["readyReplicas"] == 1
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "hdc/serving:0.1.0"
    assert container["args"][-1].endswith("--listen-port 5000 --model digits")
    assert container["resources"]["requests"] == {"cpu": "1.0", "memory": "2000Mi"}
    assert {"name": "HDC_MODEL", "value": "digits"} in container["env"]
    assert svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    (port,) = svc["spec"]["ports"]
    assert port["port"] == port["targetPort"] == 5000
    assert d["outputs"]["endpoint"] == f"http://127.0.0.1:{port['nodePort']}"
    assert d["outputs"]["site"] == "k8s" and d["outputs"]["model"] == "digits"
    resources = chain.resources(d["uuid"])
    assert {r["toscaNodeName"] for r in resources} == {"kubernetes_runtime", "model_service"}

    chain.delete(d["uuid"])
    assert k8s.of_kind("deployments") == [] and k8s.of_kind("services") == []


def test_deep_oc_module_on_marathon(chain: Platform) -> None:
    """INDIGO's DEEP-OC Marathon template, unchanged: a Marathon app with a GPU and the three
    published ports, on the only site with GPUs for containers."""
    marathon = chain.sites.marathon
    params = {
        "docker_image": "deephdc/deep-oc-image-classification-tf",
        "num_gpus": 1,
        "rclone_url": "https://nc.example.org/remote.php/webdav/",
        "rclone_user": "alice",
        "jupyter_password": "s3cr3t-jupyter",
    }
    d = deployed(chain, "deep-oc-marathon.yaml", params)
    assert d["cloudProviderName"] == "marathon"
    # the other container platforms have no GPU; the IaaS clouds do not run containers
    candidates = chain.placement(d["uuid"])["placement"]["candidates"]
    assert [c["siteId"] for c in candidates if c["rank"] > 0] == ["marathon"]
    discarded = {c["siteId"]: c["discarded"] for c in candidates if c["rank"] < 0}
    assert set(discarded) == {"k8s", "local"}, candidates
    assert all("GPU" in why[0]["message"] for why in discarded.values()), discarded

    (app,) = marathon.apps.values()
    assert app["gpus"] == 1 and app["cpus"] == 1 and app["mem"] == 4096
    docker = app["container"]["docker"]
    assert docker["image"] == "deephdc/deep-oc-image-classification-tf"
    assert [m["containerPort"] for m in docker["portMappings"]] == [5000, 6006, 8888]
    assert app["cmd"] == "deepaas-run --listen-ip=0.0.0.0 --listen-port=5000"
    assert app["env"]["RCLONE_CONFIG_RSHARE_URL"] == params["rclone_url"]
    assert app["env"]["RCLONE_CONFIG_RSHARE_USER"] == "alice"
    assert app["labels"]["HAPROXY_GROUP"] == "external"
    (task,) = app["tasks"]
    assert task["state"] == "TASK_RUNNING" and len(task["ports"]) == 3
    assert d["outputs"]["marathon_endpoint"] == f"http://{task['host']}:{task['ports'][0]}"
    assert d["outputs"]["Docker_image"] == params["docker_image"]
    assert d["outputs"]["Docker_num_gpus"] == 1
    assert "s3cr3t-jupyter" not in str(d)  # a password input never comes back

    chain.delete(d["uuid"])
    assert marathon.apps == {}


def test_training_job_on_kubernetes(chain: Platform, tmp_path: Path) -> None:
    """A batch job runs where jobs run (a Kubernetes Job); CREATE_COMPLETE means the job was
    accepted and started. Its command is then run here as the cluster would run it: it trains
    the model and ends."""
    k8s = chain.sites.k8s
    d = deployed(chain, "model-training-job.yaml", {"model": "digits", "train_args": '{"C": 0.5}'})
    assert d["cloudProviderName"] == "k8s"
    assert d["outputs"]["model"] == "digits"

    (job,) = k8s.of_kind("jobs")
    assert k8s.of_kind("deployments") == [] and k8s.of_kind("services") == []
    assert job["metadata"]["namespace"] == "ml"
    assert job["status"]["active"] == 1
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "OnFailure"
    (container,) = pod["containers"]
    assert container["image"] == "hdc/serving:0.1.0"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HDC_MODEL"] == "digits"
    shell, flag, command = container["args"]
    assert (shell, flag) == ("/bin/sh", "-c")
    assert shlex.split(command)[:4] == ["hdc-serving", "train", "--model", "digits"]

    # The container's command, run as its image would run it (hdc-serving on the PATH).
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("HDC_")} | env
    run_env["HDC_HOME"] = str(tmp_path)
    run_env["PATH"] = f"{Path(sys.executable).parent}:{run_env.get('PATH', '')}"
    ran = subprocess.run(
        [shell, flag, command], env=run_env, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    assert '"C": 0.5' in ran.stdout and '"accuracy": 0.9' in ran.stdout, ran.stdout

    chain.delete(d["uuid"])
    assert k8s.of_kind("jobs") == []


def test_gpu_vms_on_openstack(chain: Platform) -> None:
    cloud = chain.sites.os_gpu
    neutron = cloud.neutron
    assert neutron is not None
    before = {k: {o["id"] for o in v} for k, v in neutron.project_resources().items()}
    d = deployed(chain, "vm-gpu-iaas.yaml", {"num_instances": 2, "ssh_public_key": ""})
    assert d["cloudProviderName"] == "os-gpu"
    assert (
        chain.placement(d["uuid"])["placement"]["candidates"][0]["flavor"]["name"]
        == "g1.xlarge.v100"
    )

    servers = cloud.servers_view()
    assert len(servers) == 2
    fips = {f["port_id"]: f["floating_ip_address"] for f in neutron.floatingips.values()}
    public, private = [], []
    for server in servers:
        assert server["status"] == "ACTIVE"
        assert server["flavor"]["id"] == "a1b2c3d4-0101"  # the V100 flavor, by its id
        assert cloud.flavors["a1b2c3d4-0101"]["extra_specs"]["Accelerator:Number"] == "1"
        assert server["image"]["id"] == "img-ubuntu-cuda"  # the CUDA image placement chose
        assert server["metadata"]["hdc-infrastructure-id"] == d["physicalId"]
        (port,) = [p for p in neutron.ports.values() if p["device_id"] == server["id"]]
        public.append(fips[port["id"]])  # a floating IP on the VM's port
        private.append(port["fixed_ips"][0]["ip_address"])
        (sg,) = [neutron.security_groups[g] for g in port["security_groups"]]
        assert any(
            r["direction"] == "ingress" and r["port_range_min"] == 22 and r["protocol"] == "tcp"
            for r in sg["security_group_rules"]
        ), sg
        assert "cloudadm" in cloud.user_data[server["id"]]
    assert sorted(d["outputs"]["public_ips"]) == sorted(public)
    assert sorted(d["outputs"]["private_ips"]) == sorted(private)
    assert cloud.projects[chain.sites.projects["os-gpu"]].quota["cores"]["in_use"] == 16

    chain.delete(d["uuid"])
    assert cloud.servers_view() == []
    after = {k: {o["id"] for o in v} for k, v in neutron.project_resources().items()}
    assert after == before  # no floating IP, port, network, router or group left
    assert cloud.projects[chain.sites.projects["os-gpu"]].quota["cores"]["in_use"] == 0


def router_tokens(user_data: str) -> dict[str, str]:
    """What each router host's case of the orchestrator's enrolment script writes as its
    one-time token, from a VM's cloud-init user data (a MIME multipart)."""
    message = email.message_from_string(user_data)
    (script,) = [
        p.get_payload() for p in message.walk() if p.get_content_type() == "text/x-shellscript"
    ]
    found = re.findall(
        rf"^  ([\w.-]+)\)\n.*?^cat > {re.escape(TOKEN_FILE)} <<'(\w+)'\n(\S+)\n\2$",
        script,
        re.M | re.S,
    )
    return {host: token for host, _, token in found}


def test_hybrid_cluster_over_two_openstack_sites(chain: Platform) -> None:
    """One deployment, two sites: the hub and site A's router and workers on os-gpu, site B's
    router and workers on os-b, joined by an overlay the orchestrator made in the real
    vrouter; each router VM boots with its own enrolment, which the vrouter accepts."""
    clouds = chain.sites.clouds()
    before = {
        site: {k: {o["id"] for o in v} for k, v in c.neutron.project_resources().items()}
        for site, c in clouds.items()
    }
    params = {"site_a": "os-gpu", "site_b": "os-b", "hub_dns_name": "hub.hybrid.hdc.test"}
    d = deployed(chain, "hybrid-cluster.yaml", params)
    uuid = d["uuid"]
    events, _ = chain.follow(uuid)
    started = [e["provider"] for e in events if e["kind"] == "attempt.started"]
    assert started == ["os-gpu", "os-b"], events
    assert any(e["kind"] == "vrouter.overlay_created" for e in events), events

    # Each site holds its part of the cluster, on its own private network.
    nodes = {
        site: {s["metadata"]["hdc-node"]: s for s in c.servers_view()} for site, c in clouds.items()
    }
    assert set(nodes["os-gpu"]) == {"hub_server", "site_a_router_server", "site_a_workers"}
    assert set(nodes["os-b"]) == {"site_b_router_server", "site_b_workers"}

    def addresses(site: str, node: str) -> dict[str, str]:
        (net,) = nodes[site][node]["addresses"].values()
        return {a["OS-EXT-IPS:type"]: a["addr"] for a in net}

    hub = addresses("os-gpu", "hub_server")
    assert d["outputs"]["hub_public_ip"] == hub["floating"]
    assert hub["fixed"].startswith("192.168.10.")
    worker_a, worker_b = addresses("os-gpu", "site_a_workers"), addresses("os-b", "site_b_workers")
    assert "floating" not in worker_a and "floating" not in worker_b  # private addresses only
    assert d["outputs"]["site_a_worker_ips"] == worker_a["fixed"]
    assert worker_a["fixed"].startswith("192.168.10.")
    assert d["outputs"]["site_b_worker_ips"] == worker_b["fixed"]
    assert worker_b["fixed"].startswith("192.168.20.")
    flavor = clouds["os-b"].flavors[nodes["os-b"]["site_b_workers"]["flavor"]["id"]]
    assert flavor["vcpus"] >= 2 and flavor["ram"] >= 4000

    # The overlay: the owner's, with the template's address plan and one site per router.
    overlay_id = d["outputs"]["overlay_id"]
    assert d["outputs"]["vrouter_overlay_id"] == overlay_id
    vrouter = chain.services["vrouter"].url
    r = chain.http.get(f"{vrouter}/v1/overlays/{overlay_id}", headers=chain.headers())
    assert r.status_code == 200, r.text
    assert r.json()["cidr"] == "10.200.0.0/16" and r.json()["owner"].startswith("alice")
    r = chain.http.get(f"{vrouter}/v1/overlays/{overlay_id}/sites", headers=chain.headers())
    sites = {s["name"]: s for s in r.json()}
    assert set(sites) == {"hub", "site_a_router", "site_b_router"}
    assert sites["site_a_router"]["private_ranges"] == ["192.168.10.0/24"]
    assert sites["site_b_router"]["private_ranges"] == ["192.168.20.0/24"]
    assert sites["site_b_router"]["nat"] is True

    # Every router VM, on its own site, got its one-time token and enrols with it.
    for site, host in (
        ("os-gpu", "hub_server"),
        ("os-gpu", "site_a_router_server"),
        ("os-b", "site_b_router_server"),
    ):
        server = nodes[site][host]
        token = router_tokens(clouds[site].user_data[server["id"]])[host]
        _, public_key = wg_keypair()
        r = chain.http.post(
            f"{vrouter}/v1/agent/enrol", json={"token": token, "public_key": public_key}
        )
        assert r.status_code == 201, r.text
        assert r.json()["overlay_id"] == overlay_id
    r = chain.http.get(f"{vrouter}/v1/overlays/{overlay_id}/sites", headers=chain.headers())
    assert all(s["enrolled"] for s in r.json()), r.json()

    chain.delete(uuid)
    for site, cloud in clouds.items():
        assert cloud.servers_view() == [], site
        after = {k: {o["id"] for o in v} for k, v in cloud.neutron.project_resources().items()}
        assert after == before[site], site  # no floating IP, network, router or group left
    r = chain.http.get(f"{vrouter}/v1/overlays/{overlay_id}", headers=chain.headers())
    assert r.status_code == 404, r.text


def test_hybrid_cluster_fails_whole_when_one_site_refuses(chain: Platform) -> None:
    """Site B's cloud refuses the VMs (its quota is used up since its agent last reported):
    the deployment fails with site B's reason, site A's part and the overlay are removed."""
    clouds = chain.sites.clouds()
    quota = clouds["os-b"].projects[chain.sites.projects["os-b"]].quota["instances"]
    limit, quota["limit"] = quota["limit"], 0
    try:
        params = {"site_a": "os-gpu", "site_b": "os-b", "hub_dns_name": "hub.hybrid.hdc.test"}
        uuid = chain.create("hybrid-cluster.yaml", params)
        events, status = chain.follow(uuid)
    finally:
        quota["limit"] = limit
    d = chain.deployment(uuid).json()
    assert status == d["status"] == "CREATE_FAILED", d
    assert "os-b" in d["statusReason"] and "Quota exceeded for instances" in d["statusReason"]
    kinds = [e["kind"] for e in events]
    assert "vrouter.overlay_deleted" in kinds and kinds.count("cleanup.requested") == 2, events
    wait_for(
        lambda: all(c.servers_view() == [] for c in clouds.values()),
        30,
        "site A's VMs to be removed",
    )
    chain.delete(uuid)
