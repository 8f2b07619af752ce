#!/usr/bin/env bash
# The quick start: set everything up (scripts/setup.sh), start a local cluster in the
# background (`cube up --detach`: a manager and 3 workers, state in .cube/) and run the
# example web server task on it, then say how to look at it.
#
# A manager that already answers is reused. `cube up` and `cube run` read these, so a
# test (or you) can move the cluster: CUBE_DATA_DIR (.cube), CUBE_MANAGER_PORT (5555),
# CUBE_WORKER_PORT (5556, the first worker), CUBE_CLUSTER_NAME (up).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

cube=.venv/bin/cube
export CUBE_MANAGER=${CUBE_MANAGER:-127.0.0.1:${CUBE_MANAGER_PORT:-5555}}
if $cube node >/dev/null 2>&1; then
    echo "up: a manager already answers at $CUBE_MANAGER; using it"
else
    $cube up --detach
fi
echo

out=$(mktemp)
trap 'rm -f "$out"' EXIT
$cube run -f examples/hello.json --wait | tee "$out"
task=$(awk 'NR == 1 { print $2 }' "$out")
port=$($cube status "$task" -o json | .venv/bin/python -c '
import json, sys
ports = json.load(sys.stdin).get("HostPorts") or {}
print(next((b[0]["HostPort"] for b in ports.values() if b), ""))')

echo
$cube status
echo
$cube node
m=""
[ "$CUBE_MANAGER" = "127.0.0.1:5555" ] || m=" -m $CUBE_MANAGER"
down="cube down"
[ -z "${CUBE_DATA_DIR:-}" ] || down="cube down --data-dir $CUBE_DATA_DIR"
short=${task:0:8}
echo
echo "Cube is running the example task \"hello\" ($short). Look at it:"
hint() { printf '  %-50s # %s\n' "$1" "$2"; }
hint "curl http://127.0.0.1:${port}/" "the task's web server"
hint ".venv/bin/cube status$m $short" "its details, ports and restarts"
hint ".venv/bin/cube node$m" "the workers"
hint ".venv/bin/cube stop$m $short" "stop it"
hint ".venv/bin/$down" "stop the cluster (--purge: and its containers)"
echo "Tip: 'source .venv/bin/activate' to type just 'cube'. More in README.md."
