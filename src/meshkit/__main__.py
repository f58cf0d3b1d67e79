"""`python -m meshkit` runs the same CLI as the `meshkit` command."""

import sys

from meshkit.cli import main

sys.exit(main())
