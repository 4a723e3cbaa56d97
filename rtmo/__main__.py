"""`python -m rtmo ...` (and `torchrun --nproc_per_node N -m rtmo train ...`): the `rtmo` command."""

from .cli import main

raise SystemExit(main())
