"""``python -m tools.world``: generate a shapes world (see :mod:`tools.world.generate`)."""

from tools.world.generate import main

raise SystemExit(main())
