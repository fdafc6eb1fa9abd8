"""`python -m splitspec`: the same as the `splitspec` command."""

import sys

from splitspec.entrypoints.cli import main

sys.exit(main())
