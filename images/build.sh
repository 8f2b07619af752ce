#!/usr/bin/env bash
# Build Cube's offline images (cube/busybox:latest, cube/http:latest) from a checkout,
# without a venv. The recipe lives in the package, src/cube/images/build.sh, so that an
# installed Cube builds the same images with `cube images build`; this only runs it.
set -euo pipefail
exec bash "$(dirname "$0")/../src/cube/images/build.sh" "$@"
