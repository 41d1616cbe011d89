"""``python -m imds_server.testmode``: print the demo fleet (what ``--demo`` seeds) in the
fleet-file form; ``demo-fleet.json`` is its output."""

from __future__ import annotations

import json

from ._fleet import demo_fleet

print(json.dumps(demo_fleet(), indent=2))
