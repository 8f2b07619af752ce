#!/usr/bin/env bash
# Run every test: lint, types, unit tests and the integration tests against a real
# Docker engine. Sets up what is missing first (see scripts/setup.sh).
# Extra arguments go to pytest, e.g. scripts/test.sh -k worker
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy
exec .venv/bin/pytest "$@"
