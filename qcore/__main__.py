"""``python -m qcore`` is the ``qcore`` command."""
from .cli.main import main

raise SystemExit(main())
