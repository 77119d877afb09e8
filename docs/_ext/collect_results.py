"""Collect committed validation and benchmark result pages into ``docs/_generated/``.

Run by the docs extension (``nat_docs.py``) when a build starts.  For each of ``validation/`` and
``benchmarks/`` it writes ``<kind>_results.md``, which the pages ``results/validation.md`` and
``results/benchmarks.md`` include.  If result pages (``report.md`` written by the validation
suite, ``results.md`` written by ``benchmarks/report.py``; any depth up to 2 below the folder) are
present in the checkout, their text is embedded with headings renumbered to nest under the page,
images copied beside the generated file, and links to repository files turned into inline code
(so the build never depends on them).  If none are present, the generated file says so and points
at the command that produces them — the build never fails because a result is missing.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

# Only pages that a report writer generates from a run (every number on them comes from that run);
# hand-written READMEs describe the suites and are not embedded as results.
REPORT_NAMES = {"results.md", "report.md"}
SOURCES = {
    "validation": {
        "folders": ["validation"],
        "command": "nat-estimators validate --report validation_report",
    },
    "benchmarks": {
        "folders": ["benchmarks"],
        "command": "python benchmarks/run.py",
    },
}

_HEADING = re.compile(r"^(#{1,6})(\s+.*)$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)(\s+\"[^\"]*\")?\)")
_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)(\s+\"[^\"]*\")?\)")


def _find_reports(root: Path, folders: list[str]) -> list[Path]:
    found: list[Path] = []
    for f in folders:
        base = root / f
        if not base.is_dir():
            continue
        for p in sorted(base.rglob("*.md")):
            rel = p.relative_to(base)
            if len(rel.parts) <= 3 and p.name.lower() in REPORT_NAMES and \
                    not any(part.startswith((".", "_")) for part in rel.parts[:-1]):
                found.append(p)
    return found


def _rewrite(text: str, src: Path, root: Path, outdir: Path, tag: str, top: int) -> str:
    """Renumber headings to start at level ``top``, copy images, neutralise relative links."""
    lines = text.splitlines()
    in_fence = False
    levels: set[int] = set()
    for line in lines:
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (m := _HEADING.match(line)):
            levels.add(len(m.group(1)))
    remap = {lvl: min(top + i, 6) for i, lvl in enumerate(sorted(levels))}

    assets = outdir / f"{tag}_assets"
    out = []
    in_fence = False
    for line in lines:
        if _FENCE.match(line):
            in_fence = not in_fence
            out.append(line)
            continue
        if in_fence:
            out.append(line)
            continue
        if m := _HEADING.match(line):
            line = "#" * remap[len(m.group(1))] + m.group(2)

        def image(m: re.Match[str]) -> str:
            alt, url = m.group(1), m.group(2)
            if re.match(r"^[a-z]+://", url):
                return m.group(0)
            p = (src.parent / url).resolve()
            if not p.is_file():
                return f"*(image `{url}` not in this checkout)*"
            assets.mkdir(parents=True, exist_ok=True)
            name = "_".join(p.relative_to(root).parts)
            shutil.copy2(p, assets / name)
            return f"![{alt}]({assets.name}/{name})"

        def link(m: re.Match[str]) -> str:
            label, url = m.group(1), m.group(2)
            if re.match(r"^(https?|mailto):", url):
                return m.group(0)
            return f"{label} (`{url}`)" if label.strip("`") != url else f"`{url}`"

        line = _IMAGE.sub(image, line)
        line = _LINK.sub(link, line)
        out.append(line)
    return "\n".join(out) + "\n"


def main(root: Path | str, outdir: Path | str) -> dict[str, list[Path]]:
    root, outdir = Path(root), Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    found_all: dict[str, list[Path]] = {}
    for tag, spec in SOURCES.items():
        shutil.rmtree(outdir / f"{tag}_assets", ignore_errors=True)
        reports = _find_reports(root, spec["folders"])
        found_all[tag] = reports
        parts: list[str] = []
        if not reports:
            parts.append(
                "```{note}\nNo result files are committed in this checkout of the repository "
                f"(looked for {', '.join(sorted(REPORT_NAMES))} under "
                f"{', '.join(f'`{f}/`' for f in spec['folders'])}). Produce them with\n\n"
                f"    {spec['command']}\n\nand rebuild the documentation to embed them here.\n```\n"
            )
        for p in reports:
            rel = p.relative_to(root).as_posix()
            parts.append(f"## `{rel}`\n\n*Embedded from the repository file `{rel}`.*\n\n")
            parts.append(_rewrite(p.read_text(encoding="utf-8"), p, root, outdir, tag, top=3))
        (outdir / f"{tag}_results.md").write_text("\n".join(parts), encoding="utf-8")
    return found_all


if __name__ == "__main__":
    here = Path(__file__).resolve()
    out = sys.argv[1] if len(sys.argv) > 1 else here.parents[1] / "_generated"
    res = main(here.parents[2], out)
    for k, v in res.items():
        print(k, [str(p) for p in v])
