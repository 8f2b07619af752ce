#!/usr/bin/env bash
# Build Cube's sdist and wheel, for installing on a machine without a checkout
# (docs/operations.md, "A second machine"): scripts/dist.sh [OUTDIR], default dist/.
# Offline: it uses the build frontend and setuptools pinned in .venv (scripts/setup.sh
# installs them) instead of fetching a build environment. The wheel is built from the
# sdist, so a file the sdist leaves out fails here rather than on the other machine.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist}
if ! .venv/bin/python -c 'import build, setuptools' 2>/dev/null; then
    echo "dist: .venv lacks the build tools; run scripts/setup.sh first" >&2
    exit 1
fi
# Build from a copy of the files git knows (committed or not, never ignored ones): an
# old src/cube.egg-info left by an earlier build or the editable install lists files
# that setuptools would otherwise ship even after pyproject.toml stopped asking for them.
src=.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    src=$(mktemp -d)
    trap 'rm -rf "$src"' EXIT
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
        tar --null -T - -cf - | tar -xf - -C "$src"
fi
.venv/bin/python -m build --no-isolation --quiet --outdir "$out" "$src" >&2
ls -1 "$out"/cube-*.whl "$out"/cube-*.tar.gz
