"""Sphinx configuration: the adamx documentation site (MyST Markdown, MyST-NB, autodoc).

Build it from the repository root (the `docs` extra installs the tools)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document this working tree's adamx, not an installed copy
# The notebooks' kernels import this working tree's adamx too, and Keras runs on JAX.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
os.environ.setdefault("KERAS_BACKEND", "jax")

from docutils import nodes  # noqa: E402
from sphinx import addnodes  # noqa: E402

import adamx  # noqa: E402

project = "adamx"
author = "The adamx developers"
copyright = "The adamx developers"
release = version = adamx.__version__

extensions = [
    "myst_nb",  # Markdown pages (MyST) and executed notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # Google-style `Args:` / `Returns:` sections
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "README.md"]
root_doc = "index"

# MyST: `[text](page.md#a-heading)` links work here and on GitHub alike.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "dollarmath"]

# The notebooks (docs/notebooks/ links to notebooks/, stored without outputs) are executed on
# every build, about 30 s on a 2-core CPU; a cell that raises fails the build.
nb_execution_mode = "force"
nb_execution_timeout = 120
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

# API reference from the docstrings (Google style, read by napoleon).
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": False, "undoc-members": False}
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# `name` in a docstring links to the object where Sphinx knows it, and is code otherwise.
default_role = "py:obj"
python_use_unqualified_type_names = True


html_theme = "sphinx_book_theme"
html_title = f"adamx {version}"
html_static_path = ["_static"]
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
    "use_repository_button": False,
}
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True


def _link_notebooks_here(app: object, doctree: nodes.document) -> None:
    """A Markdown link to `notebooks/NAME.ipynb` points at the link in docs/notebooks/, which
    Sphinx resolves to the notebook in the repository's notebooks/, outside the site: send it
    to the notebook's page on the site instead."""
    outside = str(ROOT / "notebooks") + os.sep
    for node in doctree.findall(addnodes.pending_xref):
        target = node.get("reftarget", "")
        if node.get("reftype") == "myst" and target.startswith(outside):
            node["reftarget"] = "notebooks/" + target.removeprefix(outside)


def setup(app: object) -> None:
    app.connect("doctree-read", _link_notebooks_here)  # type: ignore[attr-defined]
