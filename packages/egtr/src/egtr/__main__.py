from egtr.cli import main

raise SystemExit(main())
