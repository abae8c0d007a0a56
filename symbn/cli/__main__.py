"""python -m symbn.cli: the symbn command."""

import sys

from symbn.cli import main

sys.exit(main())
