"""``python -m firmware`` runs the ``evse`` command, for machines where the console script is not on PATH."""

from firmware.cli import main

raise SystemExit(main())
