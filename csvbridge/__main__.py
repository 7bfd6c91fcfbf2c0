from csvbridge.cli import main

raise SystemExit(main())
