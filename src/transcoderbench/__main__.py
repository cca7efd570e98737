"""``python -m transcoderbench`` is the same as the ``transcoderbench`` command."""

from transcoderbench.cli import main

raise SystemExit(main())
