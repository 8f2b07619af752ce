#!/usr/bin/env bash
# Run every test: lint, types, then pytest over unit, integration (real Docker), bench
# smoke and chaos tests. Sets up what is missing first (see scripts/setup.sh). Tests
# that restart the machine's Docker engine run only with --restart-docker or
# CUBE_TEST_RESTART_DOCKER=1 (.ci/run sets it).
# Extra arguments go to pytest, e.g. scripts/test.sh -k worker
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy
exec .venv/bin/pytest "$@"
