"""Documentation checks that run without Sphinx: they parse the sources in ``docs/``.

* every public name (``nat_estimators.__all__``, ``nat_estimators.rl.__all__``,
  ``nat_estimators.costmodel.__all__``, ``nat_estimators.cli.__all__``) is listed in the API
  reference pages (``docs/api/*.rst``: ``autosummary`` entries and ``.. data::`` /
  ``.. auto*::`` directives, resolved against ``.. currentmodule::``);
* every public callable of ``nat_estimators``, ``nat_estimators.rl`` and
  ``nat_estimators.costmodel`` — the functions and classes in ``__all__`` and the public
  alternative constructors (classmethods) of those classes — has a numpydoc docstring: a summary
  line and an ``Examples`` section with at least one ``>>>`` line;
* the narrative pages and notebooks contain no placeholder text, the plain ``python`` code blocks
  of the theory and guide pages run, and the committed notebooks (the tutorials' one source) are
  valid Python notebooks and carry no outputs;
* importing ``docs/conf.py`` has no side effects (the build's work is in ``docs/_ext``).

The build itself (``sphinx-build -W``) is what CI runs for rendering; see ``docs/index.md``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API_DIR = DOCS / "api"
NOTEBOOKS = ROOT / "notebooks"


# ----------------------------------------------------------------------------- helpers
def _public_modules() -> dict[str, object]:
    mods: dict[str, object] = {"nat_estimators": importlib.import_module("nat_estimators")}
    mods["nat_estimators.cli"] = importlib.import_module("nat_estimators.cli")
    mods["nat_estimators.costmodel"] = importlib.import_module("nat_estimators.costmodel")
    if (ROOT / "nat_estimators" / "rl" / "__init__.py").is_file():
        try:
            mods["nat_estimators.rl"] = importlib.import_module("nat_estimators.rl")
        except ImportError:  # torch missing: the rl names cannot be checked here
            pass
    return mods


_DIRECTIVE = re.compile(r"^\s*\.\.\s+(?:py:)?(data|function|class|exception|attribute|"
                        r"autodata|autofunction|autoclass|autoexception)::\s+(\S+)")
_CURRENT = re.compile(r"^\s*\.\.\s+(?:py:)?currentmodule::\s+(\S+)")
_AUTOSUMMARY = re.compile(r"^(\s*)\.\.\s+autosummary::")


def documented_names(api_dir: Path = API_DIR) -> set[str]:
    """Fully qualified names the API reference pages list."""
    names: set[str] = set()
    for path in sorted(api_dir.glob("*.rst")):
        lines = path.read_text(encoding="utf-8").splitlines()
        current = ""
        i = 0
        while i < len(lines):
            line = lines[i]
            if m := _CURRENT.match(line):
                current = m.group(1)
            elif m := _DIRECTIVE.match(line):
                names.add(_qualify(m.group(2), current))
            elif m := _AUTOSUMMARY.match(line):
                indent = len(m.group(1))
                i += 1
                while i < len(lines):
                    body = lines[i]
                    if body.strip() and len(body) - len(body.lstrip()) <= indent:
                        break
                    entry = body.strip()
                    if entry and not entry.startswith(":") and not entry.startswith(".."):
                        names.add(_qualify(entry.split()[0].lstrip("~"), current))
                    i += 1
                continue
            i += 1
    return names


def _qualify(name: str, current: str) -> str:
    if name.startswith("nat_estimators") or not current:
        return name
    return f"{current}.{name}"


def _public_names() -> list[str]:
    out = []
    for modname, mod in _public_modules().items():
        out += [f"{modname}.{n}" for n in getattr(mod, "__all__", [])]
    return sorted(out)


def _deprecated(obj: object) -> bool:
    """A deprecated alias (summary "Deprecated ..."): tests/test_deprecations.py covers it."""
    return (inspect.getdoc(obj) or "").startswith("Deprecated")


def _callables() -> list[tuple[str, object]]:
    """Public callables whose docstrings must carry Examples (see the module docstring)."""
    out: list[tuple[str, object]] = []
    for modname, mod in _public_modules().items():
        if modname == "nat_estimators.cli":
            continue
        for n in getattr(mod, "__all__", []):
            obj = getattr(mod, n)
            if not callable(obj) or _deprecated(obj):
                continue
            out.append((f"{modname}.{n}", obj))
            if inspect.isclass(obj):
                for attr, raw in vars(obj).items():
                    if attr.startswith("_") or not isinstance(raw, classmethod):
                        continue
                    if not _deprecated(getattr(obj, attr)):
                        out.append((f"{modname}.{n}.{attr}", getattr(obj, attr)))
    return out


def _sections(doc: str) -> dict[str, str]:
    """numpydoc sections of a cleaned docstring: {title: body}; '' is the summary part."""
    lines = doc.splitlines()
    sections: dict[str, list[str]] = {"": []}
    title = ""
    i = 0
    while i < len(lines):
        if (i + 1 < len(lines) and lines[i].strip()
                and re.fullmatch(r"-{3,}", lines[i + 1].strip())
                and len(lines[i + 1].strip()) >= len(lines[i].strip()) - 1):
            title = lines[i].strip()
            sections[title] = []
            i += 2
            continue
        sections.setdefault(title, []).append(lines[i])
        i += 1
    return {k: "\n".join(v) for k, v in sections.items()}


PUBLIC_NAMES = _public_names()
CALLABLES = _callables()


# ----------------------------------------------------------------------------- API reference
def test_api_reference_pages_exist():
    assert (API_DIR / "index.rst").is_file()
    assert documented_names(), "no autosummary entries found in docs/api/*.rst"


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_public_name_in_api_reference(name):
    documented = documented_names()
    assert name in documented, (
        f"{name} is public (in __all__) but not listed in the API reference: add it to an "
        "autosummary block in docs/api/*.rst"
    )


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_api_reference_lists_no_unknown_names():
    """Entries that do not resolve (renamed or removed names) would break the Sphinx build."""
    mods = _public_modules()
    checked = [n for n in documented_names()
               if "nat_estimators.rl" in mods or not n.startswith("nat_estimators.rl.")]
    unknown = sorted(n for n in checked if not _resolves(n))
    assert not unknown, f"documented in docs/api/*.rst but not importable: {unknown}"


# ----------------------------------------------------------------------------- docstrings
@pytest.mark.parametrize("name,obj", CALLABLES, ids=[n for n, _ in CALLABLES])
def test_public_callable_has_numpydoc_examples(name, obj):
    doc = inspect.getdoc(obj)
    assert doc and doc.strip(), f"{name} has no docstring"
    if inspect.isclass(obj):
        # a class must document itself, not inherit its base class's docstring
        own = obj.__dict__.get("__doc__")
        assert own and own.strip(), f"{name} has no docstring of its own"
    sections = _sections(doc)
    summary = sections[""].strip().splitlines()
    assert summary and summary[0].strip(), f"{name}: the docstring has no summary line"
    assert "Examples" in sections, f"{name}: the docstring has no 'Examples' section"
    assert ">>>" in sections["Examples"], f"{name}: the 'Examples' section has no '>>>' example"


# ----------------------------------------------------------------------------- narrative pages
_PLACEHOLDER = re.compile(r"\b(TODO|TBD|FIXME|XXX)\b|lorem ipsum|coming soon", re.IGNORECASE)


def _narrative_files() -> list[Path]:
    files = [p for p in DOCS.rglob("*.md") if not _generated(p)]
    files += [p for p in (DOCS / "api").glob("*.rst")]
    files += sorted(NOTEBOOKS.glob("*.ipynb")) + sorted(NOTEBOOKS.glob("*.py"))
    return sorted(files)


def _generated(p: Path) -> bool:
    rel = p.relative_to(DOCS).parts
    return rel[0] in {"_build", "_generated", "notebooks", "jupyter_execute"} or (
        len(rel) > 1 and rel[:2] == ("api", "generated"))


@pytest.mark.parametrize("path", _narrative_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_placeholder_text(path):
    text = path.read_text(encoding="utf-8")
    m = _PLACEHOLDER.search(text)
    assert m is None, f"placeholder text {m.group(0)!r} in {path.relative_to(ROOT)}"


_PY_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
SNIPPET_PAGES = [p for p in sorted((DOCS / "theory").glob("*.md"))
                 + sorted((DOCS / "guide").glob("*.md"))
                 if _PY_BLOCK.search(p.read_text(encoding="utf-8"))]


def test_some_pages_have_python_snippets():
    assert SNIPPET_PAGES, "no theory/guide page has a ```python block to run"


@pytest.mark.parametrize("path", SNIPPET_PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_python_snippets_run(path):
    """Plain ``python`` blocks of the theory and guide pages run, in order, in one namespace.

    (Pages with ``{code-cell}`` blocks are executed by the docs build; the trainer guides are
    sketches against verl/TRL/OpenRLHF, which are not dependencies.)
    """
    text = path.read_text(encoding="utf-8")
    if "import jax" in text:
        pytest.importorskip("jax", reason="JAX is not installed (pip install -e '.[jax]')")
    blocks = _PY_BLOCK.findall(text)
    ns: dict[str, object] = {"__name__": "__docs_snippet__"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # snippets may show warnings on purpose
        for code in blocks:
            exec(compile(code, str(path), "exec"), ns)


# ----------------------------------------------------------------------------- notebooks
NOTEBOOK_FILES = sorted(NOTEBOOKS.glob("*.ipynb"))


def test_at_least_four_notebooks():
    assert len(NOTEBOOK_FILES) >= 4, [p.name for p in NOTEBOOK_FILES]


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.name)
def test_notebook_committed_without_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{path.name}: a code cell has outputs; clear them"
            assert cell.get("execution_count") is None, f"{path.name}: execution counts set"


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.name)
def test_notebook_in_docs_toctree(path):
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    assert f"notebooks/{path.stem}" in index, f"{path.name} is not in the docs toctree"


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.name)
def test_notebook_is_a_valid_python_notebook(path):
    """The committed ``.ipynb`` files are the tutorials' one source: valid nbformat 4 documents
    with a Python 3 kernel, so JupyterLab opens them and MyST-NB executes them."""
    nbformat = pytest.importorskip("nbformat", reason="nbformat comes with the docs extra")
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    nbformat.validate(nb)
    assert nb.nbformat == 4, f"{path.name}: nbformat {nb.nbformat}"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", path.name
    assert nb.cells and nb.cells[0].cell_type == "markdown", f"{path.name}: starts without a title"
    assert nb.cells[0].source.startswith("# "), f"{path.name}: the first cell is not a title"


# ----------------------------------------------------------------------------- conf.py
def _tree_state(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _side_effects(conf: Path) -> tuple[list[str], list[str]]:
    """Environment variables changed and files written or touched (under the config's folder) by
    running the Sphinx configuration file ``conf`` in a fresh interpreter."""
    import subprocess

    before = _tree_state(conf.parent)
    code = ("import os, runpy; env = dict(os.environ); "
            f"runpy.run_path({str(conf)!r}); "
            "print(sorted(k for k in set(env) | set(os.environ) "
            "if env.get(k) != os.environ.get(k)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    after = _tree_state(conf.parent)
    changed = sorted(k for k in set(after) | set(before) if after.get(k) != before.get(k))
    return json.loads(r.stdout.strip().replace("'", '"')), changed


def test_importing_conf_py_has_no_side_effects():
    """``docs/conf.py`` only configures; what the build generates (figures, result pages, CLI
    help) is done by the extension in ``docs/_ext`` during the build."""
    assert _side_effects(DOCS / "conf.py") == ([], [])


def test_side_effect_check_rejects_a_writing_conf(tmp_path):
    conf = tmp_path / "conf.py"
    conf.write_text("import os, pathlib\n"
                    "os.environ['NAT_CONF_SIDE_EFFECT'] = '1'\n"
                    "(pathlib.Path(__file__).parent / 'notebooks').mkdir()\n"
                    "(pathlib.Path(__file__).parent / 'notebooks' / 'a.ipynb').write_text('{}')\n")
    assert _side_effects(conf) == (["NAT_CONF_SIDE_EFFECT"], ["notebooks/a.ipynb"])


# ----------------------------------------------------------------------------- README
README = ROOT / "README.md"
_BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)


def test_readme_python_blocks_run_and_print(capsys):
    """The README's ``python`` blocks (numpy and PyTorch quick starts) run in order, in one
    namespace, and each prints something: a newcomer who pastes one sees a result, and every
    name a block uses (``response_mask``, ``per_token_loss``) is defined in it."""
    blocks = _PY_BLOCK.findall(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 2
    for i, code in enumerate(blocks):
        ns: dict[str, object] = {"__name__": "__readme__"}  # each block stands alone
        exec(compile(code, f"README.md python block {i}", "exec"), ns)
        assert capsys.readouterr().out.strip(), f"README python block {i} prints nothing"


def test_readme_torch_block_says_what_its_inputs_are():
    torch_block = next(b for b in _PY_BLOCK.findall(README.read_text(encoding="utf-8"))
                       if "select_tokens" in b)
    for name in ("response_mask", "per_token_loss"):
        said = [line for line in torch_block.splitlines()
                if line.lstrip().startswith("#") and f"{name}:" in line]
        assert said, f"the README's PyTorch block does not say what {name} is"
    assert "bool (B, T)" in torch_block and "float32 (B, T)" in torch_block


def _commands(text: str) -> list[str]:
    return [line.split("#")[0].strip() for block in _BASH_BLOCK.findall(text)
            for line in block.splitlines() if line.split("#")[0].strip()]


def test_getting_started_agrees_with_readme():
    """The README's first block is the main job (install + ``nat-estimators validate --quick``)
    and the tests (``python -m pytest``); the getting-started page names the same commands and
    explains ``validate``."""
    readme = _commands(README.read_text(encoding="utf-8"))
    page_text = (DOCS / "getting_started.md").read_text(encoding="utf-8")
    page = _commands(page_text)
    assert "nat-estimators validate --quick" in readme[0] and readme[1] == "python -m pytest"
    assert any(c == "nat-estimators validate --quick" for c in page), page
    assert "python -m pytest" in page
    assert "validate" in page_text.split("## Quick start")[0]
