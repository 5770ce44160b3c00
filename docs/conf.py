"""Sphinx configuration of the zipo_scvi documentation (built with ``sphinx-build -W``)."""

import sys
from datetime import date
from importlib.metadata import version as _version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # document this checkout, not an installed copy

project = "zipo_scvi"
author = "zipo_scvi developers"
copyright = f"{date.today().year}, {author}"
try:
    release = _version("zipo_scvi")
except Exception:  # not installed: read the package
    import zipo_scvi

    release = zipo_scvi.__version__
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_autodoc_typehints",
    "sphinx_copybutton",
]

# Notebooks are rendered with the outputs stored by the test run (tests/test_tutorials.py with
# ZIPO_STORE_TUTORIALS=1); the docs build never executes them.
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath", "deflist"]
myst_heading_anchors = 3
# .rst first: autosummary writes its generated pages with the first suffix
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
templates_path = ["_templates"]

autosummary_generate = True
autodoc_member_order = "groupwise"
# ZIPO's own methods and those of its sparsity mixin; not the scvi-tools base classes' (documented
# by scvi-tools) nor torch's.
autodoc_default_options = {
    "members": True,
    "inherited-members": "BaseModelClass,UnsupervisedTrainingMixin,BaseModuleClass,Module",
    "show-inheritance": False,
}

autodoc_mock_imports: list[str] = []
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
typehints_defaults = "braces"
always_document_param_types = False
typehints_document_rtype = False  # an rtype field after a doctest breaks RST ...
typehints_use_signature_return = True  # ... so the return type shows in the signature

# No intersphinx: the build must work offline (CI and this project's machines reach only PyPI).
nitpicky = False

html_theme = "sphinx_book_theme"
html_title = "zipo_scvi"
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
html_static_path: list[str] = []


def _write_presets_table() -> None:
    """Write ``_autogen/presets.md``: the two presets side by side, read from the code."""
    from zipo_scvi._defaults import PRESETS

    (paper_module, paper_train), (default_module, default_train) = (
        PRESETS["paper"],
        PRESETS["default"],
    )

    def fmt(value) -> str:
        return "-".join(map(str, value)) if isinstance(value, tuple) and value else repr(value)

    lines = ["| setting | `paper` | `default` |", "|---|---|---|"]
    for paper, default in ((paper_module, default_module), (paper_train, default_train)):
        for key in paper:
            a, b = paper[key], default[key]
            cells = [f"`{key}`", f"`{fmt(a)}`", f"`{fmt(b)}`" if a == b else f"**`{fmt(b)}`**"]
            lines.append("| " + " | ".join(cells) + " |")
    out = Path(__file__).parent / "_autogen"
    out.mkdir(exist_ok=True)
    text = "\n".join(lines) + "\n"
    path = out / "presets.md"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


_write_presets_table()
exclude_patterns.append("_autogen")
