"""The documentation site builds, warnings being errors, exactly as docs/development.md says.

The site is Sphinx (``docs/conf.py``): Markdown pages through MyST, the API reference from the
docstrings through autodoc. A docstring that is not valid reST, a link to a page or heading
that does not exist, or a page left out of the table of contents fails the build.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# The build command docs/development.md shows (tests/test_readme.py checks it is shown, and mapped here).
BUILD = "python -m sphinx -W --keep-going -b html docs site"

# Every public package has an API page built from its docstrings.
API = ("streamcl.benchmarks", "streamcl.plugins", "streamcl.strategies", "streamcl.models", "streamcl.config",
       "streamcl.registry", "streamcl.report", "streamcl.paper_metrics", "streamcl.stats", "streamcl.results",
       "streamcl.errors")

# The README's sections moved into these pages.
PAGES = ("index", "datasets", "methods", "yaml", "cli", "results", "python", "cluster", "performance",
         "development")


def test_docs_build(tmp_path):
    """`python -m sphinx -W --keep-going -b html docs site`, into a scratch folder: no warning at all."""
    assert BUILD in (DOCS / "development.md").read_text(encoding="utf-8")
    args = shlex.split(BUILD)
    assert args[0] == "python" and args[-1] == "site"
    out = tmp_path / "site"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, *args[1:-1], str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert not re.search(r"WARNING|ERROR", log), log[-5000:]
    for page in PAGES:
        assert (out / f"{page}.html").stat().st_size > 0, page
    # The lazily exported names are documented too (autodoc imports the packages).
    benchmarks = (out / "api" / "benchmarks.html").read_text(encoding="utf-8")
    assert 'id="streamcl.benchmarks.toybox"' in benchmarks
    assert 'id="streamcl.plugins.CRUMBPlugin"' in (out / "api" / "plugins.html").read_text(encoding="utf-8")


def test_every_public_package_has_an_api_page():
    pages = {p.name: p.read_text(encoding="utf-8") for p in (DOCS / "api").glob("*.md")}
    for module in API:
        page = module.split(".", 1)[1] + ".md"
        assert page in pages, f"docs/api/{page} is missing"
        assert f".. automodule:: {module}\n" in pages[page], page
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    for page in pages:
        assert f"api/{Path(page).stem}\n" in index, f"docs/index.md does not list api/{page}"


def test_pages_are_in_the_table_of_contents():
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    toc = "\n".join(re.findall(r"```\{toctree\}\n(.*?)```", index, re.S))
    for page in PAGES[1:]:
        assert (DOCS / f"{page}.md").is_file(), page
        assert re.search(rf"^{page}$", toc, re.M), f"docs/index.md's toctree does not list {page}"
