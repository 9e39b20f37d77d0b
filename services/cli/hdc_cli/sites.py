"""`hdc site …`: the sites the infoprovider knows (its REST API, through the gateway)."""

from __future__ import annotations

import click
from hdc_cli.api import Api
from hdc_cli.output import console, emit_json, fields, json_option, table

INFO = "/infoprovider/v1"


@click.group("site")
def site() -> None:
    """Sites: what each offers and whether it is up (orchent has none; CMDB provider list)."""


@site.command("list")
@click.option("--all", "include_down", is_flag=True, help="Include sites that are down.")
@json_option
def list_(include_down: bool, as_json: bool) -> None:
    """List the registered sites with their status and freshness."""
    doc = Api.from_env().request(
        "GET", f"{INFO}/sites", params={"include_down": "true" if include_down else None}
    )
    if as_json:
        emit_json(doc)
        return
    rows = [
        {
            **s,
            "stale": (s.get("freshness") or {}).get("stale"),
            "valid_until": (s.get("freshness") or {}).get("valid_until"),
        }
        for s in doc.get("sites", [])
    ]
    if not rows:
        console.print("no sites registered; a site agent (hdc-info-agent) must report first.")
        return
    table(
        rows,
        [
            ("id", "id"),
            ("name", "name"),
            ("status", "status"),
            ("services", "service_count"),
            ("flavors", "flavor_count"),
            ("stale", "stale"),
            ("valid until", "valid_until"),
        ],
    )


@site.command()
@click.argument("site_id")
@json_option
def show(site_id: str, as_json: bool) -> None:
    """Show one site with everything it published."""
    doc = Api.from_env().request("GET", f"{INFO}/sites/{site_id}")
    if as_json:
        emit_json(doc)
        return
    services = doc.get("services") or []
    fields(doc.get("summary") or {}, ("id", "name", "status", "freshness"))
    if services:
        table(
            services,
            [("service", "id"), ("type", "type"), ("endpoint", "endpoint"), ("healthy", "healthy")],
            title="services",
        )
