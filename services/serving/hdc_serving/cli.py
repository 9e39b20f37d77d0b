"""`hdc-serving`: run the API (`run`), predict once without a server (`predict`), list models.

Flags follow `deepaas-run` (`--listen-ip`, `--listen-port`, `--model-name`, `--workers`,
`--client-max-size`); settings not given as flags come from `HDC_SERVING_*` and `--config`.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import sys
from pathlib import Path
from typing import Any

from hdc_common.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hdc-serving", description="hdc model runtime (DEEPaaS API v2 compatible)"
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve the API")
    run.add_argument("--listen-ip", help="address to listen on (default 127.0.0.1)")
    run.add_argument("--listen-port", type=int, help="port to listen on (default 8106)")
    run.add_argument(
        "--model", "--model-name", dest="model", help="serve only this model (entry point name)"
    )
    run.add_argument("--workers", "-p", type=int, help="predict worker processes (0: one per CPU)")
    run.add_argument(
        "--client-max-size",
        type=int,
        dest="max_request_bytes",
        help="largest request body in bytes",
    )
    run.add_argument("--max-upload-bytes", type=int, help="largest uploaded file in bytes")
    run.add_argument(
        "--batch-max-size", type=int, help="largest adaptive batch (1 disables batching)"
    )
    run.add_argument(
        "--predict-timeout",
        type=float,
        dest="predict_timeout_s",
        help="seconds before a predict is abandoned",
    )
    run.add_argument(
        "--data-dir", type=Path, help="where models, uploads, jobs and the SQLite file live"
    )
    run.add_argument(
        "--database-url", help="SQLAlchemy URL of the jobs database (default: SQLite in data-dir)"
    )
    run.add_argument("--no-train-endpoint", dest="enable_train", action="store_false", default=None)
    run.add_argument(
        "--no-predict-endpoint", dest="enable_predict", action="store_false", default=None
    )
    run.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    run.add_argument(
        "--identity-public-key",
        help="the gateway's identity public key (PEM file or inline PEM): /v2 and /oip "
        "requests then need a gateway-signed X-HDC-Identity header",
    )
    run.add_argument("--config", type=Path, help="YAML settings file")

    pred = sub.add_parser(
        "predict", help="one prediction (or many, --batch) without a server; JSON out"
    )
    pred.add_argument(
        "--model",
        "--model-name",
        dest="model",
        help="model name (needed when several are installed)",
    )
    pred.add_argument(
        "--arg",
        "-a",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an argument; VALUE may be JSON",
    )
    pred.add_argument(
        "--file", "-f", action="append", default=[], metavar="NAME=PATH", help="a file argument"
    )
    pred.add_argument("--json", dest="json_args", help="all arguments as one JSON object")
    pred.add_argument(
        "--batch", type=Path, help="JSON Lines file, one argument object per line ('-' for stdin)"
    )
    pred.add_argument(
        "--accept", help="media type of the answer, for models with an 'accept' argument"
    )
    pred.add_argument("--output", "-o", type=Path, help="write the answer here instead of stdout")

    train = sub.add_parser(
        "train", help="one training run without a server (a batch job); JSON result out"
    )
    train.add_argument(
        "--model",
        "--model-name",
        dest="model",
        help="model name (needed when several are installed)",
    )
    train.add_argument(
        "--args", dest="json_args", default="{}", help="training arguments as one JSON object"
    )
    train.add_argument(
        "--arg", "-a", action="append", default=[], metavar="NAME=VALUE", help="an argument"
    )

    sub.add_parser("models", help="list installed models (deepaas.v2.model entry points)")

    cat = sub.add_parser("catalog", help="check a catalog entry JSON file against the schema")
    cat.add_argument("path", type=Path)
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            _run(args)
        elif args.command == "predict":
            _predict(args)
        elif args.command == "train":
            _train(args)
        elif args.command == "models":
            from hdc_serving.loading import available

            for name, ep in sorted(available().items()):
                print(f"{name}\t{ep.value}")
        elif args.command == "catalog":
            from hdc_serving.catalog import CatalogError, validate

            try:
                validate(json.loads(args.path.read_text()))
            except (CatalogError, ValueError, OSError) as exc:
                print(f"hdc-serving: {args.path}: {exc}", file=sys.stderr)
                raise SystemExit(1) from None
            print(f"{args.path}: valid catalog entry")
    except ConfigError as exc:
        print(f"hdc-serving: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _settings(args: argparse.Namespace) -> Any:
    from hdc_common.settings import load_settings

    from hdc_serving.settings import ServingSettings

    settings = load_settings(ServingSettings, getattr(args, "config", None))
    overrides = {
        "http_host": args.listen_ip,
        "http_port": args.listen_port,
        "model": args.model,
        "workers": args.workers,
        "max_request_bytes": args.max_request_bytes,
        "max_upload_bytes": args.max_upload_bytes,
        "batch_max_size": args.batch_max_size,
        "predict_timeout_s": args.predict_timeout_s,
        "data_dir": args.data_dir,
        "database_url": args.database_url,
        "enable_train": args.enable_train,
        "enable_predict": args.enable_predict,
        "log_level": args.log_level,
        "identity_public_key": args.identity_public_key,
    }
    values = settings.model_dump()
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ServingSettings(**values)
    except Exception as exc:
        raise ConfigError(str(exc).splitlines()[0] if str(exc) else repr(exc)) from None


def _run(args: argparse.Namespace) -> None:
    from hdc_serving.loading import available

    settings = _settings(args)
    names = [settings.model] if settings.model else sorted(available())
    pool = None
    if names and all(n in available() for n in names):
        # The workers load the models while this process imports the server below.
        from hdc_serving.pool import make_pool

        pool = make_pool(settings, names)
        pool.prespawn()

    import uvicorn
    from hdc_common.logs import setup_logging

    from hdc_serving.api.app import create_app

    setup_logging("serving", settings.log_level)
    app = create_app(settings, pool=pool)
    base = f"http://{settings.http_host}:{settings.http_port}"
    print(
        f"hdc-serving: {base}/v2/  docs {base}/api  spec {base}/openapi.json  ready {base}/readyz",
        flush=True,
    )
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        loop="auto",
        http="auto",
        timeout_keep_alive=30,
        timeout_graceful_shutdown=10,
    )


def _predict(args: argparse.Namespace) -> None:
    """Same argument checks as the API, the model called in this process."""
    from hdc_serving.args import ArgumentError, negotiate
    from hdc_serving.loading import ModelNotFound, available, inspect, load_object
    from hdc_serving.uploads import UploadedFile
    from hdc_serving.worker import error_reply, render

    name = args.model
    if not name:
        names = sorted(available())
        if len(names) != 1:
            raise ConfigError(
                f"several models installed ({', '.join(names)}); choose one with --model"
            )
        name = names[0]
    try:
        obj = load_object(name)
    except ModelNotFound as exc:
        raise ConfigError(str(exc)) from None
    info = inspect(name, obj)
    spec = info.predict
    base: dict[str, Any] = {}
    if args.json_args:
        base.update(json.loads(args.json_args))
    for item in args.arg:
        key, _, value = item.partition("=")
        try:
            base[key] = json.loads(value)
        except ValueError:
            base[key] = value
    for item in args.file:
        key, _, path = item.partition("=")
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--file {key}: {path} is not a file")
        base[key] = UploadedFile(key, str(p.resolve()), mimetypes.guess_type(p.name)[0], p.name)
    accept = None
    if spec.accept:
        accept = negotiate(spec.accept, args.accept)
        if accept is None:
            raise ConfigError(
                f"--accept {args.accept}: model '{name}' answers in {', '.join(spec.accept)}"
            )
    lines = [base]
    if args.batch:
        stream = sys.stdin if str(args.batch) == "-" else args.batch.open()
        lines = [{**base, **json.loads(line)} for line in stream if line.strip()]
    os.environ.setdefault("HDC_MODEL_DIR", str(_model_dir()))
    warm = getattr(obj, "warm", None)
    if warm:
        warm()
    schema = info.response_schema
    out = args.output.open("wb") if args.output else sys.stdout.buffer
    failed = 0
    for raw in lines:
        if accept is not None:
            raw = {**raw, "accept": accept}
        try:
            reply = render(obj.predict(**spec.load(raw)), accept, schema)
        except ArgumentError as exc:
            reply = ("error", 422, str(exc))
        except Exception as exc:
            reply = error_reply(exc)
        if reply[0] == "error":
            failed += 1
            out.write(json.dumps({"error": reply[2], "status": reply[1]}).encode() + b"\n")
        else:
            out.write(reply[1] + (b"\n" if reply[2] == "application/json" else b""))
    out.flush()
    if failed:
        raise SystemExit(1)


def _train(args: argparse.Namespace) -> None:
    """What POST .../train/ does, in this process: the same argument checks, the model's own
    train(); the result as JSON on stdout, exit status 1 when training fails."""
    from hdc_serving.args import ArgumentError
    from hdc_serving.loading import ModelNotFound, available, inspect, load_object
    from hdc_serving.worker import _default

    name = args.model
    if not name:
        names = sorted(available())
        if len(names) != 1:
            raise ConfigError(
                f"several models installed ({', '.join(names)}); choose one with --model"
            )
        name = names[0]
    try:
        raw = json.loads(args.json_args or "{}")
    except ValueError as exc:
        raise ConfigError(f"--args is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError("--args must be one JSON object, e.g. '{\"C\": 0.5}'")
    for item in args.arg:
        key, _, value = item.partition("=")
        try:
            raw[key] = json.loads(value)
        except ValueError:
            raw[key] = value
    try:
        obj = load_object(name)
    except ModelNotFound as exc:
        raise ConfigError(str(exc)) from None
    info = inspect(name, obj)
    if not info.has_train:
        raise ConfigError(f"model '{name}' cannot be trained (it has no train method)")
    try:
        kwargs = info.train.load(raw)
    except ArgumentError as exc:
        raise ConfigError(f"training arguments: {exc}") from None
    os.environ.setdefault("HDC_MODEL_DIR", str(_model_dir()))
    try:
        result = obj.train(**kwargs)
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        raise SystemExit(1) from None
    print(json.dumps({"model": name, "result": result}, default=_default))


def _model_dir() -> Path:
    from hdc_common.settings import load_settings

    from hdc_serving.settings import ServingSettings

    return load_settings(ServingSettings).serving_dir / "models"


if __name__ == "__main__":
    main()
