"""`python -m mlxterp`: the same as the `mlxterp` command."""

import sys

from .cli import main

sys.exit(main())
