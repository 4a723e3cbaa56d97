from rtmo.cli.main import main

raise SystemExit(main())
