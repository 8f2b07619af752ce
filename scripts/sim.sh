#!/usr/bin/env bash
# The deterministic simulator (docs/testing.md): Cube's manager and workers under random
# faults on virtual time.
#   scripts/sim.sh --seeds 500            # seeds 1..500, in parallel, failures shrunk
#   scripts/sim.sh --seed 42              # replay one seed, print its trace
#   scripts/sim.sh --managers 3 --seeds 150   # three managers electing a leader on a simulated etcd
#   scripts/sim.sh --scenario sim-failures/seed-42.json   # replay a shrunk failure
set -euo pipefail
cd "$(dirname "$0")/.."
exec env PYTHONHASHSEED=0 .venv/bin/python -m cube.sim "$@"
