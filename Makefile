# hdc — the two commands a new user needs are `make run` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
export HDC_CACHE ?= $(HOME)/.cache/hdc

PACKAGES := proto services/common $(filter-out services/common,$(patsubst %/pyproject.toml,%,$(wildcard services/*/pyproject.toml)))
PROTOS := $(shell find proto/hdc -name '*.proto' 2>/dev/null)
INFRA := $(wildcard tests/infra/*.sh)
PYTEST_ARGS ?=

.PHONY: setup proto infra test lint format run run-distributed down bench clean

## setup: virtual environment with every service installed (editable, pinned by constraints.txt)
setup: $(VENV)/.installed proto

$(VENV)/.installed: constraints.txt requirements-dev.txt $(wildcard services/*/pyproject.toml) proto/pyproject.toml
	@command -v uv >/dev/null || $(PY) -m pip install -q 'uv==0.13.9'
	@test -x $(BIN)/python || uv venv -q --python $(PY) $(VENV)
	@mkdir -p proto/gen
	uv pip install -q --python $(BIN)/python -c constraints.txt 'uv==0.13.9' -r requirements-dev.txt $(addprefix -e ,$(PACKAGES))
	@touch $@

## proto: generate the gRPC stubs of every contract under proto/hdc into proto/gen
proto: $(VENV)/.installed
	@mkdir -p proto/gen
	@if [ -n "$(PROTOS)" ]; then $(BIN)/python -m grpc_tools.protoc -I proto \
	  --python_out=proto/gen --grpc_python_out=proto/gen --pyi_out=proto/gen $(PROTOS); fi

## infra: start the real components tests and distributed mode use (idempotent)
infra:
	@for s in $(INFRA); do echo "== $$s"; bash $$s || exit 1; done

## test: install from scratch, start the real components, run every test
test: setup infra
	$(BIN)/pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check services tests bench conftest.py

format: setup
	$(BIN)/ruff format services tests bench conftest.py
	$(BIN)/ruff check --fix .

## run: set up from scratch and bring the platform up in embedded mode
run: setup
	$(BIN)/hdc up

## run-distributed: one process per service on the real RabbitMQ and PostgreSQL (and Keycloak)
run-distributed: setup infra
	$(BIN)/hdc up --distributed --trust-issuer http://127.0.0.1:18080/realms/hdc

down:
	$(BIN)/hdc down

## bench: every benchmark; each prints one JSON line
bench: setup infra
	@for b in bench/*.py; do echo "== $$b" >&2; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) proto/gen
