"""The ``cbir`` command line: every ``argparse`` parser of cbir lives in this package.

:mod:`cbir.cli.main` builds the parser and runs a subcommand; each other module holds one
family of subcommands (``register(add)``) and turns their options into plain arguments
of the library. ``cbir.cli.main`` below is the entry point function (``cbir =
"cbir.cli:main"``); import the module as ``from cbir.cli.main import build_parser``.
"""

from cbir.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
