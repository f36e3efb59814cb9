"""Sphinx configuration for the spillcache documentation."""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import re
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx.application import Sphinx
from sphinx.util import logging as sphinx_logging

# Document the working tree, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import spillcache
from spillcache import CachedDataset, SpillCache
from spillcache.cli import main as cli_main
from spillcache.config import DEFAULTS

project = "spillcache"
author = "spillcache developers"
copyright = "spillcache developers"
release = spillcache.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "numpydoc",
]

# No intersphinx: CI may build without network access, and a failed inventory fetch is a
# warning, which -W turns into an error.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False

templates_path: list[str] = []
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_theme_options = {
    "description": "A two-tier RAM + LMDB sample cache for PyTorch",
    "fixed_sidebar": True,
}
html_static_path: list[str] = []


def _toml(value: object) -> str:
    """``value`` as Hyrax's TOML config spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _substitutions() -> str:
    """Defaults taken from the code, so the configuration reference cannot drift from it.

    ``|hyrax_<key>|`` is a Hyrax key's default (TOML); ``|sc_<param>|`` and ``|cd_<param>|``
    are the defaults of the SpillCache and CachedDataset parameters (Python).
    """
    lines = [f".. |hyrax_{key}| replace:: ``{_toml(value)}``" for key, value in DEFAULTS.items()]
    for prefix, cls in (("sc", SpillCache), ("cd", CachedDataset)):
        for name, param in inspect.signature(cls).parameters.items():
            if param.default is not inspect.Parameter.empty:
                lines.append(f".. |{prefix}_{name}| replace:: ``{param.default!r}``")
    return "\n".join(lines)


rst_epilog = _substitutions()


_logger = sphinx_logging.getLogger(__name__)


def _parameters(cls: type) -> set[str]:
    return set(inspect.signature(cls).parameters) - {"self"}


def _check_configuration(app: Sphinx, docname: str, source: list[str]) -> None:
    """Warn (an error under -W) when the configuration reference misses a parameter or key."""
    if docname != "configuration":
        return
    documented = set(re.findall(r"^``(\w+)``\s*$", source[0], flags=re.MULTILINE))
    expected = {*DEFAULTS, *_parameters(SpillCache), *_parameters(CachedDataset)}
    missing = sorted(expected - documented)
    if missing:
        _logger.warning(
            "the configuration reference has no entry for: %s", ", ".join(missing), location=docname
        )


def _check_api(app: Sphinx, docname: str, source: list[str]) -> None:
    """Warn (an error under -W) when the API reference misses a name of ``spillcache.__all__``."""
    if docname != "api":
        return
    documented = set(re.findall(r"^\.\. auto\w+:: (\w+)\s*$", source[0], flags=re.MULTILINE))
    missing = sorted(set(spillcache.__all__) - documented)
    if missing:
        _logger.warning(
            "the API reference has no entry for: %s", ", ".join(missing), location=docname
        )


class CommandHelp(Directive):
    """``.. command-help:: info`` renders ``spillcache info --help`` as produced by the code."""

    required_arguments = 0
    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        argv = [*self.arguments, "--help"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            cli_main(argv)
        return [nodes.literal_block(text=out.getvalue().rstrip())]


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the command-help directive and the checks against drift from the code."""
    # argparse wraps help text to the terminal width: fix it so the build is reproducible.
    os.environ["COLUMNS"] = "88"
    app.add_directive("command-help", CommandHelp)
    app.connect("source-read", _check_configuration)
    app.connect("source-read", _check_api)
    return {"parallel_read_safe": True}
