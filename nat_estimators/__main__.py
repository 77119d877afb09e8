"""``python -m nat_estimators`` runs the ``nat-estimators`` command."""

from .cli import main

raise SystemExit(main())
