"""``python -m agent_ledger_sdk``: the ``agent-ledger`` command."""

import sys

from .cli import main

sys.exit(main())
