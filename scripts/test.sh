#!/usr/bin/env bash
# Run every test: lint, types, then pytest. Sets up what is missing first (see
# scripts/setup.sh). With no arguments: the tests that need no Docker (tests/unit) run
# first under coverage.py, which prints the manager's line coverage and fails below
# 85%; then the deterministic simulator over CUBE_SIM_SEEDS seeds (default 500, see
# docs/testing.md) and CUBE_SIM_LEADER_SEEDS seeds with three managers electing a leader
# (default 150: they cost about twice as much each); then the rest (integration with real Docker, the web UI in Debian's
# chromium, bench smoke, chaos). Tests that restart the machine's Docker engine run only
# with CUBE_TEST_RESTART_DOCKER=1 (.ci/run sets it). Extra arguments go to one pytest
# run instead, e.g. scripts/test.sh -k worker
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy
if [ "$#" -gt 0 ]; then
    exec .venv/bin/pytest "$@"
fi
.venv/bin/coverage erase
.venv/bin/coverage run -m pytest tests/unit
echo "Coverage of cube.manager by the tests that need no Docker:"
.venv/bin/coverage report --include='*/cube/manager/*' --fail-under=85
scripts/sim.sh --seeds "${CUBE_SIM_SEEDS:-500}"
scripts/sim.sh --managers 3 --seeds "${CUBE_SIM_LEADER_SEEDS:-150}"
# The rest of pyproject's testpaths (--ignore does not apply to testpaths).
exec .venv/bin/pytest --durations=40 tests/integration tests/ui tests/bench tests/chaos
