"""`python -m rtmo.cli ...`: the same as `rtmo ...`."""

from . import main

raise SystemExit(main())
