"""Print the latest results in bench/results/ as Markdown, for docs/performance.md.

.venv/bin/python -m bench.report
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.common import RESULTS, table_markdown

ORDER = ["containers", "scale", "scheduler", "healing", "footprint"]


def render(path: Path) -> str:
    data = json.loads(path.read_text())
    lines = [f"### {data['title']}", ""]
    lines.append(f"Command: `{data['command']}` ({data['date']}, {data['duration_s']} s)")
    lines.append("")
    lines.append(table_markdown(data["columns"], data["rows"]))
    if data["targets"]:
        lines += ["", "| target | goal | measured | met |", "| --- | --- | --- | --- |"]
        for t in data["targets"]:
            met = "yes" if t["met"] else "**no**"
            lines.append(f"| {t['name']} | {t['goal']} | {t['measured']} | {met} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    results = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS
    for name in ORDER:
        path = results / f"{name}.json"
        if path.exists():
            print(render(path))


if __name__ == "__main__":
    main()
