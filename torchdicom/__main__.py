"""``python -m torchdicom`` runs the command-line interface."""

from torchdicom.cli import main

raise SystemExit(main())
