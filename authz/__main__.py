"""`python -m authz`: the `lasthop` command."""

import sys

from authz.cli.main import main

sys.exit(main())
