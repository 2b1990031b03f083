"""``python -m frakpy``: the ``frakpy`` command line."""

import sys

from frakpy.cli.main import main

sys.exit(main())
