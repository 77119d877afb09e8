"""docs/rl/openrlhf.md is a formula mapping (OpenRLHF needs a GPU to install); its code runs."""

from __future__ import annotations


def test_openrlhf_page_blocks_run():
    """docs/rl/openrlhf.md: its formula mapping (the page's only code) runs and holds."""
    import re
    import warnings
    from pathlib import Path

    page = Path(__file__).parents[1] / "docs" / "rl" / "openrlhf.md"
    text = page.read_text(encoding="utf-8")
    assert set(re.findall(r"^```(\S*)\n", text, re.MULTILINE)[0::2]) <= {"python"}
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert blocks
    ns: dict[str, object] = {"__name__": "__docs_openrlhf__"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for code in blocks:
            exec(compile(code, str(page), "exec"), ns)
