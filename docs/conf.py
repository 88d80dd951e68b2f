"""Sphinx configuration of streamcl's documentation site.

Build it (warnings are errors; tests/test_docs.py runs this very command)::

    python -m sphinx -W --keep-going -b html docs site

Why Sphinx (with MyST for the Markdown pages) rather than MkDocs + mkdocstrings: the
docstrings are written in reST (``literal``, :class:`~streamcl.models.SplitNet` roles,
``::`` literal blocks), which Sphinx's autodoc renders as written and checks (a broken
docstring is a build warning, hence an error), while mkdocstrings shows the roles as raw
text; autodoc imports the packages, so the names that ``streamcl.benchmarks`` and
``streamcl.models`` load lazily are documented too, where a static reader sees none; and
Sphinx is actively maintained, where Material for MkDocs has announced its end of life.
The pages stay Markdown, as readable on GitHub as the README they came from.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import streamcl  # noqa: E402

project = "streamcl"
author = "streamcl contributors"
copyright = "streamcl contributors, MIT licence"
version = release = streamcl.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Markdown: heading anchors for links like methods.md#wa-dytox-and-the-mas-experiment.
myst_heading_anchors = 3

# API reference: the signature as written, members in source (or __all__) order.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}
# Our docstrings only: an override without one is not listed with Avalanche's (whose reST is not ours to fix).
autodoc_inherit_docstrings = False

html_theme = "furo"
html_title = f"streamcl {release}"

# Names some packages export lazily (module-level __getattr__, so that importing them stays cheap)
# are made plain attributes here, so that autodoc, which lists a module's attributes, sees them.
for _name in ("streamcl.benchmarks", "streamcl.models"):
    _module = importlib.import_module(_name)
    for _attr in getattr(_module, "__all__", ()):
        setattr(_module, _attr, getattr(_module, _attr))
