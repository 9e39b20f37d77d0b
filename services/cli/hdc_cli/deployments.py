"""`hdc deployment …` and `hdc resource …`: the orchestrator's INDIGO-compatible API.

orchent → hdc: depls → deployment list, depshow → deployment show, depcreate → deployment
create, depupdate → deployment update, depdel → deployment delete, depreset → deployment
reset, deplog → deployment log, deptemplate → deployment template, resls → resource list,
resshow → resource show, test → status.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from hdc_cli.api import EXIT_ERROR, Api
from hdc_cli.follow import event_line, follow, sse_messages
from hdc_cli.output import console, emit_json, fields, json_option, table

ORCH = "/orchestrator"
DEPLOYMENT_ORDER = (
    "uuid",
    "status",
    "statusReason",
    "cloudProviderName",
    "outputs",
    "creationTime",
    "updateTime",
)


def parse_params(params: tuple[str, ...], parameters_json: str | None) -> dict[str, Any]:
    """`--param key=value` (value parsed as JSON when it is JSON) and/or one JSON object."""
    out: dict[str, Any] = {}
    if parameters_json:
        try:
            loaded = json.loads(parameters_json)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--parameters") from None
        if not isinstance(loaded, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--parameters")
        out.update(loaded)
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not key=value", param_hint="--param")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def read_template(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise click.BadParameter(f"{path}: {exc.strerror}", param_hint="TEMPLATE") from None


@click.group("deployment")
def deployment() -> None:
    """Deployments: create from a TOSCA template, follow, update, delete."""


@deployment.command("list")
@click.option("--created-by", default="me", show_default=True, help="'me' or <sub>@<issuer>.")
@click.option("--group", "user_group", help="Only deployments of this user group.")
@click.option("--page", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--size", type=click.IntRange(min=1, max=100), default=10, show_default=True)
@json_option
def list_(created_by: str, user_group: str | None, page: int, size: int, as_json: bool) -> None:
    """List deployments, newest first (orchent depls)."""
    doc = Api.from_env().request(
        "GET",
        f"{ORCH}/deployments",
        params={"createdBy": created_by, "userGroup": user_group, "page": page, "size": size},
    )
    if as_json:
        emit_json(doc)
        return
    table(
        doc.get("content", []),
        [
            ("uuid", "uuid"),
            ("status", "status"),
            ("provider", "cloudProviderName"),
            ("created", "creationTime"),
        ],
        title=f"page {doc['page']['number'] + 1}/{max(doc['page']['totalPages'], 1)}, {doc['page']['totalElements']} in all",
    )


@deployment.command()
@click.argument("uuid")
@json_option
def show(uuid: str, as_json: bool) -> None:
    """Show one deployment (orchent depshow)."""
    doc = Api.from_env().request("GET", f"{ORCH}/deployments/{uuid}")
    emit_json(doc) if as_json else fields(doc, DEPLOYMENT_ORDER)


def _create_options(fn: Any) -> Any:
    for opt in reversed(
        [
            click.option(
                "--param", "params", multiple=True, help="Template input key=value (repeatable)."
            ),
            click.option(
                "--parameters", "parameters_json", help="Template inputs as one JSON object."
            ),
            click.option("--callback", help="URL notified on each status change."),
            click.option("--max-providers-retry", type=click.IntRange(min=1)),
            click.option("--timeout-mins", type=click.IntRange(min=1)),
            click.option("--provider-timeout-mins", type=click.IntRange(min=1)),
            click.option("--keep-last-attempt", is_flag=True, default=None),
            click.option("--group", "user_group", help="User group the deployment belongs to."),
            click.option(
                "--wait", is_flag=True, help="Follow progress until it completes or fails."
            ),
            click.option(
                "--wait-timeout", type=click.IntRange(min=1), default=1800, show_default=True
            ),
        ]
    ):
        fn = opt(fn)
    return fn


def _body(
    template: str, params: tuple[str, ...], parameters_json: str | None, **opts: Any
) -> dict[str, Any]:
    names = {
        "callback": "callback",
        "max_providers_retry": "maxProvidersRetry",
        "timeout_mins": "timeoutMins",
        "provider_timeout_mins": "providerTimeoutMins",
        "keep_last_attempt": "keepLastAttempt",
        "user_group": "userGroup",
    }
    body: dict[str, Any] = {"template": read_template(template)}
    parameters = parse_params(params, parameters_json)
    if parameters:
        body["parameters"] = parameters
    for opt, key in names.items():
        if opts.get(opt) is not None:
            body[key] = opts[opt]
    return body


@deployment.command()
@click.argument("template", type=click.Path(dir_okay=False))
@_create_options
@click.option("--dry-run", is_flag=True, help="Show where it would be placed; deploy nothing.")
@json_option
def create(
    template: str,
    params: tuple[str, ...],
    parameters_json: str | None,
    wait: bool,
    wait_timeout: int,
    dry_run: bool,
    as_json: bool,
    **opts: Any,
) -> None:
    """Create a deployment from a TOSCA TEMPLATE file (orchent depcreate)."""
    api = Api.from_env()
    body = _body(template, params, parameters_json, **opts)
    doc = api.request(
        "POST", f"{ORCH}/deployments", json=body, params={"dryRun": "true" if dry_run else None}
    )
    if dry_run:
        emit_json(doc) if as_json else _print_placement(doc)
        return
    if wait:
        doc = follow(api, doc["uuid"], wait_timeout, quiet=as_json)
    if as_json:
        emit_json(doc)
    else:
        fields(doc, DEPLOYMENT_ORDER)
    if wait and doc.get("status", "").endswith("_FAILED"):
        raise SystemExit(EXIT_ERROR)


@deployment.command()
@click.argument("uuid")
@click.argument("template", type=click.Path(dir_okay=False))
@_create_options
@json_option
def update(
    uuid: str,
    template: str,
    params: tuple[str, ...],
    parameters_json: str | None,
    wait: bool,
    wait_timeout: int,
    as_json: bool,
    **opts: Any,
) -> None:
    """Update a deployment with a new TEMPLATE and inputs, e.g. to scale (orchent depupdate)."""
    api = Api.from_env()
    api.request(
        "PUT", f"{ORCH}/deployments/{uuid}", json=_body(template, params, parameters_json, **opts)
    )
    doc = (
        follow(api, uuid, wait_timeout, quiet=as_json)
        if wait
        else api.request("GET", f"{ORCH}/deployments/{uuid}")
    )
    emit_json(doc) if as_json else fields(doc, DEPLOYMENT_ORDER)
    if wait and doc.get("status", "").endswith("_FAILED"):
        raise SystemExit(EXIT_ERROR)


@deployment.command()
@click.argument("uuid")
@click.option("--force", is_flag=True, help="Purge the record even if resources cannot be deleted.")
@click.option("--wait", is_flag=True, help="Wait until the deployment is gone.")
@click.option("--wait-timeout", type=click.IntRange(min=1), default=900, show_default=True)
@json_option
def delete(uuid: str, force: bool, wait: bool, wait_timeout: int, as_json: bool) -> None:
    """Delete a deployment and everything it created (orchent depdel)."""
    api = Api.from_env()
    api.request("DELETE", f"{ORCH}/deployments/{uuid}", params={"force": "true" if force else None})
    result = {"uuid": uuid, "status": "DELETE_IN_PROGRESS"}
    if wait:
        result = follow(api, uuid, wait_timeout, quiet=as_json)
    emit_json(result) if as_json else console.print(f"{uuid}: {result['status']}")
    if result["status"] == "DELETE_FAILED":
        raise SystemExit(EXIT_ERROR)


@deployment.command()
@click.argument("uuid")
def reset(uuid: str) -> None:
    """Reset a deployment stuck in deletion to DELETE_FAILED so it can be deleted again."""
    Api.from_env().request("PATCH", f"{ORCH}/deployments/{uuid}", json={"status": "DELETE_FAILED"})
    console.print(f"{uuid}: DELETE_FAILED")


@deployment.command()
@click.argument("uuid")
def log(uuid: str) -> None:
    """The deployment's infrastructure log (orchent deplog)."""
    resp = Api.from_env().request("GET", f"{ORCH}/deployments/{uuid}/log", expect_json=False)
    click.echo(resp.text)


@deployment.command()
@click.argument("uuid")
def template(uuid: str) -> None:
    """The TOSCA template a deployment was created from (orchent deptemplate)."""
    resp = Api.from_env().request("GET", f"{ORCH}/deployments/{uuid}/template", expect_json=False)
    click.echo(resp.text)


@deployment.command()
@click.argument("uuid")
@click.option("--follow", is_flag=True, help="Keep printing new events as they happen.")
@json_option
def events(uuid: str, follow: bool, as_json: bool) -> None:
    """Every state change and provider attempt of a deployment."""
    api = Api.from_env()
    if follow:
        for _name, event in sse_messages(api, uuid):
            if event is not None:
                emit_json(event) if as_json else console.print(event_line(event), highlight=False)
        return
    doc = api.request("GET", f"{ORCH}/deployments/{uuid}/events")
    rows = doc.get("events", []) if isinstance(doc, dict) else doc
    if as_json:
        emit_json(doc)
    else:
        for event in rows:
            console.print(event_line(event), highlight=False)


@deployment.command()
@click.argument("uuid")
@json_option
def placement(uuid: str, as_json: bool) -> None:
    """Every candidate provider with its scores, or why it was discarded."""
    doc = Api.from_env().request("GET", f"{ORCH}/deployments/{uuid}/placement")
    emit_json(doc) if as_json else _print_placement(doc)


def _print_placement(doc: Any) -> None:
    """The orchestrator's `{placement: {summary, candidates}, attempts, requirements}`."""
    placement = doc.get("placement") or {} if isinstance(doc, dict) else {}
    if placement.get("summary"):
        console.print(placement["summary"])
    rows = [
        {
            **c,
            "provider": c.get("siteId"),
            "score": round(float(c.get("totalScore") or 0.0), 3),
            "why not": "; ".join(d.get("message", "") for d in c.get("discarded") or []),
        }
        for c in placement.get("candidates") or []
    ]
    table(
        rows,
        [
            ("rank", "rank"),
            ("provider", "provider"),
            ("service", "serviceId"),
            ("score", "score"),
            ("why not", "why not"),
        ],
    )
    attempts = doc.get("attempts") if isinstance(doc, dict) else None
    if attempts:
        table(
            attempts,
            [
                ("attempt", "attempt"),
                ("site", "siteId"),
                ("service", "serviceId"),
                ("state", "state"),
            ],
            title="attempts",
        )


@click.group("resource")
def resource() -> None:
    """Resources (TOSCA nodes) of a deployment."""


@resource.command("list")
@click.argument("deployment_uuid")
@click.option("--type", "type_", help="Only resources of this TOSCA type (subtypes included).")
@json_option
def resource_list(deployment_uuid: str, type_: str | None, as_json: bool) -> None:
    """List the resources of a deployment (orchent resls)."""
    doc = Api.from_env().request(
        "GET",
        f"{ORCH}/deployments/{deployment_uuid}/resources",
        params={"type": type_, "size": 100},
    )
    if as_json:
        emit_json(doc)
        return
    table(
        doc.get("content", []),
        [
            ("uuid", "uuid"),
            ("node", "toscaNodeName"),
            ("type", "toscaNodeType"),
            ("state", "state"),
        ],
    )


@resource.command("show")
@click.argument("deployment_uuid")
@click.argument("resource_uuid")
@json_option
def resource_show(deployment_uuid: str, resource_uuid: str, as_json: bool) -> None:
    """Show one resource (orchent resshow)."""
    doc = Api.from_env().request(
        "GET", f"{ORCH}/deployments/{deployment_uuid}/resources/{resource_uuid}"
    )
    emit_json(doc) if as_json else fields(doc)


def _action(kind: str) -> Any:
    @click.argument("deployment_uuid")
    @click.argument("resource_uuid")
    def run(deployment_uuid: str, resource_uuid: str) -> None:
        Api.from_env().request(
            "POST",
            f"{ORCH}/deployments/{deployment_uuid}/resources/{resource_uuid}/actions",
            json={"type": kind},
        )
        console.print(f"{resource_uuid}: {kind} requested")

    run.__doc__ = f"Ask a resource (a VM) to {kind}."
    return run


resource.command("start")(_action("start"))
resource.command("stop")(_action("stop"))
