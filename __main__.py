"""`python -m recurrl ...`: the same CLI as the `recurrl` command."""

import sys

from recurrl.scripts.cli import main

sys.exit(main())
