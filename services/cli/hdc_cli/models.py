"""`hdc model …`: the model catalog, deploying a catalog model, and using a deployed one.

A deployed model is addressed by its deployment: the deployment's `endpoint` output is the
DEEPaaS-compatible API of the model (hdc-serving), its `model` output the model's name. The
CLI reaches it through the gateway, `/deployments/<uuid>/model/<path>`, with its token; the
model itself refuses calls that skip the gateway.
"""

from __future__ import annotations

import json
import mimetypes
import os
import time
from pathlib import Path
from typing import Any

import click
import httpx
from hdc_cli.api import (
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_NOT_RUNNING,
    EXIT_SERVER,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Api,
    CliError,
    raise_for_status,
)
from hdc_cli.deployments import ORCH, parse_params
from hdc_cli.follow import follow
from hdc_cli.output import console, emit_json, fields, json_option, table

# The serving catalog behind the gateway; answers 502/503 when no serving runs there.
CATALOG_PATH = "/serving/catalog"
TRAIN_FINAL = {"done", "error", "cancelled"}


def templates_dir() -> Path:
    """`tosca-templates/`: HDC_TOSCA_TYPES_DIR, else the repository's, else the image's."""
    env = os.environ.get("HDC_TOSCA_TYPES_DIR")
    if env:
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        if (parent / "tosca-templates" / "templates").is_dir():
            return parent / "tosca-templates"
    return Path("/opt/hdc/tosca-templates")


def catalog(api: Api) -> tuple[list[dict[str, Any]], str]:
    """The catalog entries and where they came from: the platform's serving catalog, or,
    when the platform serves none (embedded mode runs models only as deployments), the
    entries of the models installed with hdc-serving on this machine."""
    try:
        doc = api.request("GET", CATALOG_PATH)
        return list(doc.get("models", [])), "platform"
    except CliError as exc:
        if exc.exit_code not in (EXIT_SERVER, EXIT_NOT_FOUND):
            raise
        unreachable = exc
    try:
        from hdc_serving.catalog import demo_entries
    except ImportError:
        raise unreachable from None
    return demo_entries(), "installed"


def find_entry(api: Api, name: str) -> dict[str, Any]:
    entries, _ = catalog(api)
    for entry in entries:
        if entry.get("name") == name:
            return entry
    known = ", ".join(sorted(e.get("name", "?") for e in entries)) or "none"
    raise CliError(f"no model '{name}' in the catalog (known: {known})", EXIT_NOT_FOUND)


def template_of(entry: dict[str, Any]) -> Path:
    base = templates_dir()
    ref = str(entry.get("tosca_template") or "templates/deep-oc-model.yaml")
    for candidate in (base / ref, base / "templates" / Path(ref).name):
        if candidate.is_file():
            return candidate
    raise CliError(
        f"the template '{ref}' of model '{entry.get('name')}' is not in {base}; "
        "set HDC_TOSCA_TYPES_DIR to the tosca-templates folder",
        EXIT_ERROR,
    )


@click.group("model")
def model() -> None:
    """Models: the catalog, deploy one, predict and train with a deployed one."""


@model.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List the models of the catalog."""
    entries, source = catalog(Api.from_env())
    if as_json:
        emit_json({"models": entries, "source": source})
        return
    rows = [
        {
            **e,
            "gpu": (e.get("serving") or {}).get("gpu"),
            "trainable": (e.get("training") or {}).get("trainable"),
        }
        for e in entries
    ]
    table(
        rows,
        [
            ("name", "name"),
            ("title", "title"),
            ("version", "version"),
            ("gpu", "gpu"),
            ("trainable", "trainable"),
            ("template", "tosca_template"),
        ],
        title=f"model catalog ({source})",
    )


@model.command()
@click.argument("name")
@json_option
def show(name: str, as_json: bool) -> None:
    """Show one catalog entry."""
    entry = find_entry(Api.from_env(), name)
    emit_json(entry) if as_json else fields(entry, ("name", "title", "summary", "version"))


@model.command()
@click.argument("name")
@click.option("--gpus", type=click.IntRange(min=0, max=8), help="GPUs (default: the catalog's).")
@click.option("--param", "params", multiple=True, help="More template inputs key=value.")
@click.option("--wait", is_flag=True, help="Follow progress until it completes or fails.")
@click.option("--wait-timeout", type=click.IntRange(min=1), default=900, show_default=True)
@json_option
def deploy(
    name: str,
    gpus: int | None,
    params: tuple[str, ...],
    wait: bool,
    wait_timeout: int,
    as_json: bool,
) -> None:
    """Deploy catalog model NAME with its template (a DEEP-OC model module)."""
    api = Api.from_env()
    entry = find_entry(api, name)
    serving = entry.get("serving") or {}
    parameters: dict[str, Any] = {"model": name}
    if entry.get("docker_image"):
        parameters["docker_image"] = entry["docker_image"]
    if serving.get("cpu"):
        parameters["num_cpus"] = float(serving["cpu"])
    if serving.get("memory_mb"):
        parameters["mem_size"] = f"{int(serving['memory_mb'])} MB"
    parameters["num_gpus"] = gpus if gpus is not None else (1 if serving.get("gpu") else 0)
    parameters.update(parse_params(params, None))
    body = {"template": template_of(entry).read_text(), "parameters": parameters}
    doc = api.request("POST", f"{ORCH}/deployments", json=body)
    if wait:
        doc = follow(api, doc["uuid"], wait_timeout, quiet=as_json)
    emit_json(doc) if as_json else fields(doc, ("uuid", "status", "statusReason", "outputs"))
    if wait and doc.get("status", "").endswith("_FAILED"):
        raise SystemExit(EXIT_ERROR)


def model_endpoint(api: Api, deployment_uuid: str, name: str | None) -> tuple[str, str]:
    """(base URL of the model through the gateway, model name) of a deployed model."""
    doc = api.request("GET", f"{ORCH}/deployments/{deployment_uuid}")
    outputs = doc.get("outputs") or {}
    endpoint = outputs.get("endpoint") or outputs.get("deepaas_endpoint")
    if doc.get("status") not in ("CREATE_COMPLETE", "UPDATE_COMPLETE") or not endpoint:
        raise CliError(
            f"deployment {deployment_uuid} is {doc.get('status')} and has no model endpoint "
            "yet; wait for CREATE_COMPLETE (`hdc deployment show`)",
            EXIT_ERROR,
        )
    model_name = name or outputs.get("model")
    if not model_name:
        raise CliError("the deployment names no model; give --model", EXIT_USAGE)
    return f"{api.base_url}/deployments/{deployment_uuid}/model", str(model_name)


def _model_call(api: Api, method: str, url: str, timeout_s: float = 120.0, **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {api.token}"} if api.token else {}
    headers |= kwargs.pop("headers", None) or {}
    try:
        resp = httpx.request(method, url, timeout=timeout_s, headers=headers, **kwargs)
    except httpx.ConnectError:
        raise CliError(
            f"cannot reach the model at {url}: is the deployment running?", EXIT_NOT_RUNNING
        ) from None
    except httpx.TimeoutException:
        raise CliError(f"{method} {url} timed out after {timeout_s}s", EXIT_TIMEOUT) from None
    raise_for_status(resp)
    try:
        return resp.json()
    except ValueError:
        return resp.text


def _files(items: tuple[str, ...]) -> list[tuple[str, tuple[str, bytes, str]]]:
    out = []
    for item in items:
        field, sep, path = item.partition("=")
        if not sep or not field or not path:
            raise click.BadParameter(f"{item!r} is not field=path", param_hint="--file")
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise click.BadParameter(f"{path}: {exc.strerror}", param_hint="--file") from None
        kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
        out.append((field, (Path(path).name, data, kind)))
    return out


def _form(args: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in args:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not key=value", param_hint="--arg")
        out[key] = value
    return out


@model.command()
@click.argument("deployment_uuid")
@click.option("--file", "files", multiple=True, help="A file argument: field=path (repeatable).")
@click.option("--arg", "args", multiple=True, help="An argument: key=value (repeatable).")
@click.option("--model", "model_name", help="Model name (default: the deployment's).")
@json_option
def predict(
    deployment_uuid: str,
    files: tuple[str, ...],
    args: tuple[str, ...],
    model_name: str | None,
    as_json: bool,
) -> None:
    """Send data to a deployed model and print its prediction.

    Example: hdc model predict <uuid> --file image=seven.png
    """
    if not files and not args:
        raise click.UsageError("give the model something: --file field=path and/or --arg k=v")
    upload, form = _files(files), _form(args)
    api = Api.from_env()
    endpoint, name = model_endpoint(api, deployment_uuid, model_name)
    doc = _model_call(
        api,
        "POST",
        f"{endpoint}/v2/models/{name}/predict/",
        files=upload or None,
        data=form or None,
        headers={"Accept": "application/json"},
    )
    if as_json:
        emit_json(doc)
        return
    preds = doc.get("predictions", doc) if isinstance(doc, dict) else doc
    if isinstance(preds, dict):
        fields(preds, ("label", "confidence"))
    else:
        console.print(json.dumps(preds, indent=2))


@model.command()
@click.argument("deployment_uuid")
@click.option("--arg", "args", multiple=True, help="A training argument: key=value (repeatable).")
@click.option("--model", "model_name", help="Model name (default: the deployment's).")
@click.option("--wait", is_flag=True, help="Wait until the training job ends.")
@click.option("--wait-timeout", type=click.IntRange(min=1), default=3600, show_default=True)
@json_option
def train(
    deployment_uuid: str,
    args: tuple[str, ...],
    model_name: str | None,
    wait: bool,
    wait_timeout: int,
    as_json: bool,
) -> None:
    """Start a training job on a deployed model (DEEPaaS train), optionally waiting for it."""
    form = _form(args)
    api = Api.from_env()
    endpoint, name = model_endpoint(api, deployment_uuid, model_name)
    base = f"{endpoint}/v2/models/{name}/train/"
    job = _model_call(api, "POST", base, data=form or None, headers={"Accept": "application/json"})
    if wait:
        deadline = time.monotonic() + wait_timeout
        with console.status(f"training {name}…") if not as_json else _Quiet():
            while job.get("status") not in TRAIN_FINAL:
                if time.monotonic() > deadline:
                    raise CliError(
                        f"training job {job.get('uuid')} still {job.get('status')} after "
                        f"{wait_timeout}s",
                        EXIT_TIMEOUT,
                    )
                time.sleep(0.5)
                job = _model_call(api, "GET", base + str(job["uuid"]))
    emit_json(job) if as_json else fields(job, ("uuid", "status", "progress", "result"))
    if wait and job.get("status") != "done":
        raise SystemExit(EXIT_ERROR)


class _Quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
