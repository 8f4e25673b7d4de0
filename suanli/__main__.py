"""``python -m suanli`` is the CLI."""

import sys

from suanli.cli.main import main

sys.exit(main())
