"""`python -m hardhost`: the command line."""

import sys

from hardhost.cli.main import main

sys.exit(main())
