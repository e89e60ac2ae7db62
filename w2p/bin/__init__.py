"""Command-line programs: each module with a ``main(argv)`` is ``python -m w2p.bin.<name>`` and ``w2p <name>``."""
