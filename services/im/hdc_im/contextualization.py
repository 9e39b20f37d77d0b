"""Cloud-init user-data built from the template: users, SSH keys, packages, files, commands."""

from __future__ import annotations

from typing import Any

import yaml

from hdc_im.topology import NodeSpec

BOUNDARY = "==HDC-IM-BOUNDARY=="


def cloud_config(node: NodeSpec, infrastructure_id: str, index: int) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    if node.ssh_keys or node.username:
        user: dict[str, Any] = {
            "name": node.username or "cloudadm",
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "shell": "/bin/bash",
        }
        if node.ssh_keys:
            user["ssh_authorized_keys"] = list(node.ssh_keys)
        cfg["users"] = ["default", user]
    if node.packages:
        cfg["package_update"] = True
        cfg["packages"] = list(node.packages)
    files = [{"path": p, "content": c, "permissions": "0644"} for p, c in node.files.items()]
    files.append(
        {
            "path": "/etc/hdc/node.env",
            "content": f"HDC_INFRASTRUCTURE_ID={infrastructure_id}\nHDC_NODE={node.name}\n"
            f"HDC_VM_INDEX={index}\n",
            "permissions": "0644",
        }
    )
    cfg["write_files"] = files
    mounts = [
        [_device(v, i), v["location"], "auto", "defaults,nofail", "0", "2"]
        for i, v in enumerate(node.volumes)
        if v.get("location")
    ]
    if mounts:
        cfg["fs_setup"] = [
            {"device": m[0], "filesystem": "ext4", "overwrite": False} for m in mounts
        ]
        cfg["mounts"] = mounts
    if node.commands:
        cfg["runcmd"] = list(node.commands)
    return cfg


def _device(volume: dict[str, Any], i: int) -> str:
    dev = volume.get("device") or f"xvd{chr(ord('b') + i)}"
    return dev if dev.startswith("/dev/") else f"/dev/{dev}"


def user_data(node: NodeSpec, infrastructure_id: str, index: int, extra: str | None = None) -> str:
    """The user-data document; with an extra fragment (e.g. vrouter enrolment) a MIME multipart."""
    main = "#cloud-config\n" + yaml.safe_dump(
        cloud_config(node, infrastructure_id, index), sort_keys=False
    )
    if not extra:
        return main
    extra_type = (
        "text/cloud-config" if extra.lstrip().startswith("#cloud-config") else "text/x-shellscript"
    )
    parts = [("text/cloud-config", "hdc.cfg", main), (extra_type, "extra", extra)]
    body = [f'Content-Type: multipart/mixed; boundary="{BOUNDARY}"', "MIME-Version: 1.0", ""]
    for ctype, name, content in parts:
        body += [
            f"--{BOUNDARY}",
            f'Content-Type: {ctype}; charset="utf-8"',
            f'Content-Disposition: attachment; filename="{name}"',
            "",
            content,
        ]
    body.append(f"--{BOUNDARY}--")
    return "\n".join(body) + "\n"
