"""OpenStack collector, with plain HTTP against the OpenStack APIs (no SDK to pin).

Keystone v3 (password or application credential, scoped per project), Nova flavors with
extra specs (microversion 2.61 inlines them; older clouds get one os-extra_specs call per
flavor), Nova quotas (`os-quota-sets/{project}/detail`, `limits` when that is forbidden),
Glance v2 active images, Neutron networks. Flavors are essential: without them the whole
collector fails. Images, networks and quotas that cannot be read become `failed_parts`.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import urljoin

import httpx

from hdc_infoprovider.agent.collectors import CollectorError
from hdc_infoprovider.agent.config import OpenStackCollectorConfig, ProjectConfig

log = logging.getLogger(__name__)
NOVA_MICROVERSION = "2.61"
IMAGE_PROPS = {
    "os_type": ("os_type",),
    "os_distribution": ("os_distro",),
    "os_version": ("os_version",),
    "architecture": ("architecture",),
    "gpu_driver": ("gpu_driver",),
    "cuda_version": ("gpu_cuda", "cuda_version"),
    "cudnn_version": ("gpu_cudnn", "cudnn_version"),
    "user_name": ("default_user", "os_admin_user"),
}
KNOWN_IMAGE_FIELDS = {
    "id", "name", "status", "visibility", "container_format", "disk_format", "min_disk",
    "min_ram", "protected", "tags", "created_at", "updated_at", "self", "file", "schema",
    "checksum", "os_hash_algo", "os_hash_value", "size", "virtual_size", "owner",
    "locations", "direct_url", "os_hidden", "description",
}  # fmt: skip


class _Session:
    """One project-scoped Keystone token and its catalog."""

    def __init__(self, client: httpx.Client, cfg: OpenStackCollectorConfig, project: ProjectConfig):
        self.client = client
        self.cfg = cfg
        auth: dict[str, Any]
        if cfg.application_credential_id:
            auth = {
                "identity": {
                    "methods": ["application_credential"],
                    "application_credential": {
                        "id": cfg.application_credential_id,
                        "secret": cfg.application_credential_secret,
                    },
                }
            }
        else:
            scope: dict[str, Any] = (
                {"id": project.project_id}
                if project.project_id
                else {"name": project.project_name, "domain": {"name": project.project_domain_name}}
            )
            auth = {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": cfg.username,
                            "domain": {"name": cfg.user_domain_name},
                            "password": cfg.password,
                        }
                    },
                },
                "scope": {"project": scope},
            }
        url = cfg.auth_url.rstrip("/") + "/auth/tokens"
        try:
            resp = client.post(url, json={"auth": auth})
        except httpx.HTTPError as exc:
            raise CollectorError(f"keystone at {cfg.auth_url} unreachable: {exc}") from None
        if resp.status_code != 201:
            raise CollectorError(
                f"keystone refused the credentials for project "
                f"{project.project_name or project.project_id} ({resp.status_code})"
            )
        self.token = resp.headers.get("X-Subject-Token", "")
        body = resp.json()["token"]
        self.project_id = body.get("project", {}).get("id", "")
        self.catalog = body.get("catalog", [])

    def endpoint(self, kind: str) -> str:
        for svc in self.catalog:
            if svc.get("type") != kind:
                continue
            for ep in svc.get("endpoints", []):
                if ep.get("interface") == self.cfg.interface and (
                    not self.cfg.region or ep.get("region") == self.cfg.region
                ):
                    return str(ep["url"]).rstrip("/")
        raise CollectorError(f"no {self.cfg.interface} {kind} endpoint in the catalog")

    def get(self, url: str, **headers: str) -> Any:
        try:
            resp = self.client.get(url, headers={"X-Auth-Token": self.token, **headers})
        except httpx.HTTPError as exc:
            raise CollectorError(f"GET {url}: {exc}") from None
        if resp.status_code != 200:
            raise CollectorError(f"GET {url}: HTTP {resp.status_code}")
        return resp.json()


class OpenStackCollector:
    def __init__(self, cfg: OpenStackCollectorConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name

    def collect(self) -> list[dict[str, Any]]:
        with httpx.Client(timeout=self.cfg.timeout_s) as client:
            first = _Session(client, self.cfg, self.cfg.projects[0])
            failed: list[str] = []
            failures: list[str] = []
            flavors = self._flavors(first)
            images = self._part("images", failed, failures, lambda: self._images(first))
            networks = self._part("networks", failed, failures, lambda: self._networks(first))
            quotas = []
            for i, project in enumerate(self.cfg.projects):
                try:
                    sess = first if i == 0 else _Session(client, self.cfg, project)
                    quotas.append(self._quota(sess, project))
                except CollectorError as exc:
                    failures.append(f"quotas of {project.tenant}: {exc}")
                    if "quotas" not in failed:
                        failed.append("quotas")
        service: dict[str, Any] = {
            "id": self.cfg.service_id,
            "type": "org.openstack.nova",
            "endpoint": self.cfg.auth_url,
            "region": self.cfg.region,
            "api_version": f"compute {NOVA_MICROVERSION}",
            "identity_providers": [i.model_dump() for i in self.cfg.identity_providers],
            "public_ip_assignable": any(n["public"] for n in networks or []),
            "flavors": flavors,
            "images": images or [],
            "networks": networks or [],
            "quotas": quotas,
            "failed_parts": failed,
        }
        if failures:
            service["properties"] = {"collector_warnings": "; ".join(failures)[:1000]}
        return [service]

    @staticmethod
    def _part(name: str, failed: list[str], failures: list[str], fn: Any) -> Any:
        try:
            return fn()
        except CollectorError as exc:
            failed.append(name)
            failures.append(f"{name}: {exc}")
            log.warning("openstack %s unreadable: %s", name, exc)
            return None

    # -- nova ----------------------------------------------------------------------

    def _flavors(self, s: _Session) -> list[dict[str, Any]]:
        base = s.endpoint("compute")
        headers = {
            "OpenStack-API-Version": f"compute {NOVA_MICROVERSION}",
            "X-OpenStack-Nova-API-Version": NOVA_MICROVERSION,
        }
        url = f"{base}/flavors/detail?is_public={'None' if self.cfg.include_private_flavors else 'true'}"
        out = []
        for _ in range(1000):
            body = s.get(url, **headers)
            for f in body.get("flavors", []):
                specs = f.get("extra_specs")
                if specs is None:
                    specs = s.get(f"{base}/flavors/{f['id']}/os-extra_specs").get("extra_specs", {})
                out.append(self._flavor(f, specs))
            nxt = [
                link["href"] for link in body.get("flavors_links", []) if link.get("rel") == "next"
            ]
            if not nxt:
                return out
            url = nxt[0]
        raise CollectorError("flavor listing did not end after 1000 pages")

    def _flavor(self, f: dict[str, Any], specs: dict[str, str]) -> dict[str, Any]:
        keys = self.cfg.flavor_keys
        gpus = _int(specs.get(keys.gpu_number))
        model = specs.get(keys.gpu_model, "")
        # PCI passthrough ("a100:2") and vGPU resources are the other ways sites expose GPUs.
        alias = specs.get("pci_passthrough:alias", "")
        if not gpus and alias:
            name, _, count = alias.split(",")[0].partition(":")
            gpus = _int(count) or 1
            model = model or name
        if not gpus:
            gpus = _int(specs.get("resources:VGPU"))
        ib = specs.get(keys.infiniband, "")
        known = {keys.gpu_number, keys.gpu_vendor, keys.gpu_model, keys.infiniband}
        return {
            "id": str(f["id"]),
            "name": str(f.get("name", "")),
            "cpus": int(f.get("vcpus", 0)),
            "ram_mb": int(f.get("ram", 0)),
            "disk_gb": int(f.get("disk", 0)),
            "gpus": gpus,
            "gpu_vendor": specs.get(keys.gpu_vendor, "") if gpus else "",
            "gpu_model": model if gpus else "",
            "infiniband": ib.lower() == keys.infiniband_value.lower() if ib else False,
            "public": bool(f.get("os-flavor-access:is_public", True)),
            "properties": {k: str(v)[:1024] for k, v in specs.items() if k not in known},
        }

    def _quota(self, s: _Session, project: ProjectConfig) -> dict[str, Any]:
        base = s.endpoint("compute")
        limits: dict[str, int] = {}
        usage: dict[str, int] = {}
        try:
            qs = s.get(f"{base}/os-quota-sets/{s.project_id}/detail")["quota_set"]
            for key, ours in (("instances", "instances"), ("cores", "cores"), ("ram", "ram_mb"),
                              ("floating_ips", "floating_ips")):  # fmt: skip
                if isinstance(qs.get(key), dict):
                    limits[ours] = int(qs[key].get("limit", -1))
                    usage[ours] = int(qs[key].get("in_use", 0))
        except CollectorError:
            # Some clouds forbid the detail call to members; `limits` is always allowed.
            absolute = s.get(f"{base}/limits")["limits"]["absolute"]
            for ours, lim, used in (
                ("instances", "maxTotalInstances", "totalInstancesUsed"),
                ("cores", "maxTotalCores", "totalCoresUsed"),
                ("ram_mb", "maxTotalRAMSize", "totalRAMUsed"),
                ("floating_ips", "maxTotalFloatingIps", "totalFloatingIpsUsed"),
            ):
                if lim in absolute:
                    limits[ours] = int(absolute[lim])
                    usage[ours] = int(absolute.get(used, 0))
        return {
            "tenant": project.tenant,
            "project_id": s.project_id,
            "project_name": project.project_name,
            "limits": limits,
            "usage": usage,
        }

    # -- glance / neutron ---------------------------------------------------------------

    def _images(self, s: _Session) -> list[dict[str, Any]]:
        base = s.endpoint("image")
        url = f"{base}/v2/images?status=active&limit=100"
        out = []
        for _ in range(10000):
            body = s.get(url)
            for img in body.get("images", []):
                out.append(_image(img))
            nxt = body.get("next")
            if not nxt:
                return out
            url = urljoin(base + "/", nxt.lstrip("/"))
        raise CollectorError("image listing did not end after 10000 pages")

    def _networks(self, s: _Session) -> list[dict[str, Any]]:
        base = s.endpoint("network")
        url = f"{base}/networks" if re.search(r"/v2\.0$", base) else f"{base}/v2.0/networks"
        return [
            {
                "id": str(n["id"]),
                "name": str(n.get("name", "")),
                "public": bool(n.get("router:external", False)),
                "shared": bool(n.get("shared", False)),
            }
            for n in s.get(url).get("networks", [])
        ]


def _image(img: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"id": str(img["id"]), "name": str(img.get("name") or "")[:255]}
    for ours, theirs in IMAGE_PROPS.items():
        for key in theirs:
            if img.get(key):
                out[ours] = str(img[key])[:255]
                break
    out["cuda"] = bool(out.get("cuda_version"))
    if img.get("description"):
        out["description"] = str(img["description"])[:1024]
    used = {k for keys in IMAGE_PROPS.values() for k in keys} | KNOWN_IMAGE_FIELDS
    extra = {
        k: str(v)[:1024]
        for k, v in img.items()
        if k not in used and isinstance(v, str | int | float | bool)
    }
    out["properties"] = dict(list(extra.items())[:200])
    return out


def _int(value: Any) -> int:
    try:
        return max(0, int(str(value).strip()))
    except (TypeError, ValueError):
        return 0
