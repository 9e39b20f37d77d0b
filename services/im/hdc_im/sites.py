"""Which driver serves a site: the im's `sites:` settings first, the request's data second."""

from __future__ import annotations

from typing import Any

from hdc_im.drivers.base import CloudError, Driver
from hdc_im.settings import ImSettings


class DriverFactory:
    def __init__(self, settings: ImSettings) -> None:
        self.settings = settings

    def __call__(self, site: dict[str, Any], credentials: dict[str, Any] | None) -> Driver:
        conf = self.settings.sites.get(str(site.get("id", "")))
        kind = conf.type if conf else str(site.get("type", ""))
        creds = dict(conf.credentials) if conf else {}
        creds.update(credentials or {})  # per-request credentials win over stored ones
        endpoint = str(site.get("endpoint") or (conf.endpoint if conf else ""))
        region = str(site.get("region") or (conf.region if conf else ""))
        site_id = str(site.get("id", kind))
        if kind in ("dummy", "ec2", "openstack", "libcloud"):
            from hdc_im.drivers.libcloud_driver import LibcloudDriver

            return LibcloudDriver(
                kind,
                site_id,
                endpoint=endpoint,
                region=region,
                credentials=creds,
                provider=(conf.provider if conf else "") or str(site.get("provider", "")),
                options=conf.options if conf else {},
                default_image=conf.default_image if conf else "",
                default_instance_type=conf.default_instance_type if conf else "",
            )
        if kind == "local":
            from hdc_im.drivers.local import LocalDriver

            return LocalDriver(
                self.settings.data_dir / "local",
                self.settings.local_command,
                self.settings.local_host,
                identity_public_key=self.settings.identity_key_pem(),
            )
        if kind == "kubernetes":
            from hdc_im.drivers.kubernetes_driver import KubernetesDriver

            return KubernetesDriver(
                endpoint,
                creds,
                namespace=conf.namespace if conf else creds.get("namespace", "default"),
            )
        if kind == "marathon":
            from hdc_im.drivers.marathon_driver import MarathonDriver

            return MarathonDriver(endpoint, creds)
        raise CloudError(f"unknown site type '{kind}'", bad_input=True)
