from clip4dm.cli import main

raise SystemExit(main())
