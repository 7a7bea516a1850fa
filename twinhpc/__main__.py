"""``python -m twinhpc`` is the ``twinhpc`` command."""

import sys

from .cli.main import main

sys.exit(main())
