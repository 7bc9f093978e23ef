"""``python -m clip4dm.eval BENCHMARK ...`` (and ``torchrun --nproc-per-node N -m clip4dm.eval ...``)."""

from clip4dm.eval.cli import main

raise SystemExit(main())
