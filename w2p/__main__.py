"""``python -m w2p <subcommand>``: the same as the ``w2p`` command."""
import sys

from w2p.cli import main

sys.exit(main())
