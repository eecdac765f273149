"""``python -m cbir.cli``: the ``cbir`` command."""

import sys

from cbir.cli.main import main

sys.exit(main())
