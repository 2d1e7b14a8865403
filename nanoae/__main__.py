"""``python -m nanoae`` is the ``nanoae`` command."""

import sys

from nanoae.cli import main

sys.exit(main())
