"""Sphinx extension of the nat_estimators documentation: what the build generates.

Importing ``docs/conf.py`` has no side effects; this extension does the build-time work, in
Sphinx's own events, so that it runs once per build and only when a build runs:

* ``builder-inited``: writes the design-comparison figure and table (:mod:`figures`) and the
  pages embedding the committed validation / benchmark reports (:mod:`collect_results`) to
  ``docs/_generated/`` (git-ignored build inputs), and makes notebook kernels single-threaded;
* the ``nat-cli-help`` directive renders the help text of ``nat-estimators`` or one of its
  sub-commands from the argument parser itself, so the page never goes stale;
* two ``autodoc-process-docstring`` hooks adapt docstrings to numpydoc / autodoc (see below).

The notebooks need no copying: ``docs/notebooks`` is a link to the repository's ``notebooks/``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any

import collect_results
import figures
from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
GENERATED = DOCS / "_generated"


# ----------------------------------------------------------------------------- generated inputs
def _generate(app: Sphinx) -> None:
    # Notebook kernels inherit this: the examples use tiny models, for which one thread is
    # fastest, and single-threaded kernels do not slow to a crawl when the machine is busy.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    GENERATED.mkdir(exist_ok=True)
    figures.main(GENERATED)
    collect_results.main(ROOT, GENERATED)


# ----------------------------------------------------------------------------- CLI help
class CliHelp(SphinxDirective):
    """``nat-cli-help [SUBCOMMAND]``: the ``--help`` text of ``nat-estimators [SUBCOMMAND]``."""

    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        from nat_estimators.cli import build_parser

        parser = build_parser()
        if self.arguments:
            subs = next(a for a in parser._actions
                        if isinstance(a, argparse._SubParsersAction))
            name = self.arguments[0]
            if name not in subs.choices:
                raise self.error(f"nat-estimators has no sub-command {name!r}; "
                                 f"known: {', '.join(subs.choices)}")
            parser = subs.choices[name]
        old = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width
        try:
            text = parser.format_help()
        finally:
            if old is None:
                os.environ.pop("COLUMNS", None)
            else:
                os.environ["COLUMNS"] = old
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


# ----------------------------------------------------------------------------- docstrings
# numpydoc renders a parameter's type in emphasis (``*array, shape (..., N, *V)*``); a bare ``*``
# inside it (the value-axes notation ``*V``) breaks the emphasis.  Escape such stars in the
# numpydoc sections before numpydoc sees the docstring (runs at a higher priority than numpydoc).
_STAR = re.compile(r"(?<=[(,\s])\*(?=[A-Za-z_])")


def _escape_type_stars(app: Sphinx, what: str, name: str, obj: Any, options: Any,
                       lines: list[str]) -> None:
    in_math = False
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(".. math::"):
            in_math = True
            continue
        if in_math:
            if stripped and not line.startswith((" ", "\t")):
                in_math = False
            else:
                continue
        if ":math:" in line or "*" not in line:
            continue
        lines[i] = _STAR.sub(r"\\*", line)


def _data_doc_comments(app: Sphinx, what: str, name: str, obj: Any, options: Any,
                       lines: list[str]) -> None:
    """Module constants re-exported by a package (``nat_estimators.rl.LOSS_MODES``): autodoc looks
    for their ``#:`` doc comment in the package's ``__init__`` and, not finding it, shows the
    docstring of the value's type (``tuple``).  Take the comment from the defining submodule."""
    if what != "data" or not lines or inspect.getdoc(type(obj)) != "\n".join(lines).strip():
        return
    from sphinx.pycode import ModuleAnalyzer

    modname, _, attr = name.rpartition(".")
    for mod in sorted(m for m in list(sys.modules) if m.startswith(modname + ".")):
        try:
            docs = ModuleAnalyzer.for_module(mod).find_attr_docs()
        except Exception:
            continue
        if ("", attr) in docs:
            lines[:] = list(docs[("", attr)])
            return
    lines[:] = []


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx.ext.autodoc")  # defines the autodoc-process-docstring event
    app.connect("builder-inited", _generate)
    app.add_directive("nat-cli-help", CliHelp)
    app.connect("autodoc-process-docstring", _escape_type_stars, priority=100)
    app.connect("autodoc-process-docstring", _data_doc_comments, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
