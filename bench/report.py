"""Print the latest results in bench/results/ as Markdown, for docs/performance.md.

.venv/bin/python -m bench.report
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.common import RESULTS, ROOT, table_markdown

DOC = ROOT / "docs" / "performance.md"
START, END = "<!-- results -->", "<!-- /results -->"

# Result files, relative to the results directory, in the order the document shows them:
# each benchmark's default run, and the scale benchmark's variants (`--out` subfolders).
ORDER = [
    "containers.json",
    "scale.json",
    "scale-persistent/scale.json",
    "scale-100-workers/scale.json",
    "store.json",
    "scheduler.json",
    "healing.json",
    "failover.json",
    "jobs.json",
    "footprint.json",
]


def render(path: Path) -> str:
    data = json.loads(path.read_text())
    lines = [f"### {data['title']}", ""]
    lines.append(f"Command: `{data['command']}` ({data['date']}, {data['duration_s']} s)")
    lines.append("")
    lines.append(table_markdown(data["columns"], data["rows"]))
    for table in data.get("tables", []):
        lines += ["", f"{table['title']}:", "", table_markdown(table["columns"], table["rows"])]
    if data["targets"]:
        lines += ["", "| target | goal | measured | met |", "| --- | --- | --- | --- |"]
        for t in data["targets"]:
            met = "yes" if t["met"] else "**no**"
            lines.append(f"| {t['name']} | {t['goal']} | {t['measured']} | {met} |")
    return "\n".join(lines) + "\n"


def report(results: Path) -> str:
    parts = [render(results / name) for name in ORDER if (results / name).exists()]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.report")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--write", action="store_true", help=f"update {DOC.name}")
    args = parser.parse_args()
    text = report(args.results)
    if not args.write:
        print(text)
        return
    doc = DOC.read_text()
    head, _, rest = doc.partition(START)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{START}\n\n{text}\n{END}{tail}")


if __name__ == "__main__":
    main()
