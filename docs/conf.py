"""Sphinx configuration of the nat_estimators documentation.

Build (from the repository root)::

    pip install "torch==2.13.0" -e ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html

Importing this file has no side effects: what the build generates (the design-comparison figure
and table, the embedded result reports, the CLI help texts) is done by the local extension
``_ext/nat_docs.py`` during the build.  The notebooks are read in place (``docs/notebooks`` links
to the repository's ``notebooks/``).

Environment variables: ``NAT_DOCS_NB_EXECUTION`` sets MyST-NB's execution mode (default
``force``: every notebook is executed on every build, which is what CI wants; ``cache`` reuses
results of unchanged notebooks locally; ``off`` skips execution for quick prose edits).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))

import nat_estimators  # noqa: E402

# -- project -------------------------------------------------------------------------------------
project = "nat_estimators"
author = "nat_estimators developers"
copyright = "2026, nat_estimators developers"
release = nat_estimators.__version__
version = release

# -- extensions ----------------------------------------------------------------------------------
extensions = [
    "nat_docs",  # docs/_ext: generated figures, tables, result pages, CLI help, docstring hooks
    "myst_nb",  # MyST markdown + notebooks (includes myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "jupyter_execute", "_ext", "**.ipynb_checkpoints",
                    "_generated/*.md", "README.md", "notebooks/README.md"]
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


# -- HTML ----------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"nat_estimators {release}"
html_theme_options = {"navigation_with_keys": True}

nitpicky = False
