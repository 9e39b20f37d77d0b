#!/usr/bin/env bash
# Build helm from the Go module proxy once (cached outside the repo) for chart tests.
set -euo pipefail
CACHE="${HDC_CACHE:-$HOME/.cache/hdc}"
HELM_VERSION="${HDC_HELM_VERSION:-v3.19.0}"
# `go install` builds report only major.minor, so the stamp file records the full version.
if [[ -x "$CACHE/bin/helm" && "$(cat "$CACHE/bin/helm.version" 2>/dev/null)" == "$HELM_VERSION" ]]; then
  exit 0
fi
command -v go >/dev/null || { echo "helm.sh: Go is needed to build helm" >&2; exit 1; }
mkdir -p "$CACHE/bin"
GOBIN="$CACHE/bin" GOFLAGS=-mod=mod go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
echo "$HELM_VERSION" > "$CACHE/bin/helm.version"
