"""``python -m streamcl`` == the ``streamcl`` console script."""

from streamcl.cli import main

raise SystemExit(main())
