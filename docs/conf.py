"""Sphinx configuration of the nat_estimators documentation.

Build (from the repository root)::

    pip install "torch==2.13.0" -e ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html

At start-up this file also

* writes the design-comparison figure and table to ``docs/_generated/`` (``scripts/figures.py``),
* collects committed validation / benchmark result files into ``docs/_generated/``
  (``scripts/collect_results.py``; a page that says how to produce them when none are committed),
* copies ``notebooks/*.ipynb`` to ``docs/notebooks/`` so that MyST-NB executes and renders them.

Environment variables: ``NAT_DOCS_NB_EXECUTION`` sets MyST-NB's execution mode (default
``force``: every notebook is executed on every build, which is what CI wants; ``cache`` reuses
results of unchanged notebooks locally; ``off`` skips execution for quick prose edits).
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import sys
from pathlib import Path

# Notebook kernels inherit this: the examples use tiny models, for which one thread is fastest, and
# single-threaded kernels do not slow to a crawl when the build machine is busy.
os.environ.setdefault("OMP_NUM_THREADS", "1")

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "scripts"))

import collect_results  # noqa: E402
import figures  # noqa: E402

import nat_estimators  # noqa: E402

# -- generated inputs ----------------------------------------------------------------------------
GENERATED = DOCS / "_generated"
GENERATED.mkdir(exist_ok=True)
figures.main(GENERATED)
collect_results.main(ROOT, GENERATED)


def _write_cli_help() -> None:
    """Help texts of the sub-commands, for ``cli.md`` (generated, so they never go stale)."""
    import argparse

    from nat_estimators.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    os.environ["COLUMNS"] = "100"
    for name, sub in subs.choices.items():
        (GENERATED / f"cli_{name}_help.txt").write_text(sub.format_help(), encoding="utf-8")
    (GENERATED / "cli_help.txt").write_text(parser.format_help(), encoding="utf-8")


_write_cli_help()

NB_SRC = ROOT / "notebooks"
NB_DST = DOCS / "notebooks"
if NB_DST.exists():
    shutil.rmtree(NB_DST)
NB_DST.mkdir()
for nb in sorted(NB_SRC.glob("*.ipynb")):
    shutil.copy2(nb, NB_DST / nb.name)

# -- project -------------------------------------------------------------------------------------
project = "nat_estimators"
author = "nat_estimators developers"
copyright = "2026, nat_estimators developers"
release = nat_estimators.__version__
version = release

# -- extensions ----------------------------------------------------------------------------------
extensions = [
    "myst_nb",  # MyST markdown + notebooks (includes myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "jupyter_execute", "scripts", "**.ipynb_checkpoints",
                    "_generated/*.md", "README.md"]
templates_path = ["_templates"]
root_doc = "index"

# MyST
myst_enable_extensions = [
    "dollarmath", "amsmath", "colon_fence", "deflist", "substitution", "tasklist",
]
myst_heading_anchors = 3
myst_dmath_double_inline = True

# MyST-NB: execute notebooks at build time (the docs build is the notebooks' CI)
nb_execution_mode = os.environ.get("NAT_DOCS_NB_EXECUTION", "force")
nb_execution_timeout = 180  # seconds per notebook (each is designed to run in well under 60 s)
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

# autodoc / autosummary / numpydoc
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "none"  # types are in the numpydoc "Parameters" sections
autodoc_member_order = "groupwise"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks: set[str] = set()


# numpydoc renders a parameter's type in emphasis (``*array, shape (..., N, *V)*``); a bare ``*``
# inside it (the value-axes notation ``*V``) breaks the emphasis.  Escape such stars in the
# numpydoc sections before numpydoc sees the docstring (runs at a higher priority than numpydoc).
_STAR = re.compile(r"(?<=[(,\s])\*(?=[A-Za-z_])")


def _escape_type_stars(app, what, name, obj, options, lines):
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


def _data_doc_comments(app, what, name, obj, options, lines):
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


def setup(app):
    app.connect("autodoc-process-docstring", _escape_type_stars, priority=100)
    app.connect("autodoc-process-docstring", _data_doc_comments, priority=100)


# -- HTML ----------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"nat_estimators {release}"
html_theme_options = {"navigation_with_keys": True}

nitpicky = False
