"""``python -m imds_server`` is ``imds-server`` (tests start real processes this way)."""

import sys

from ._cli import main

sys.exit(main())
