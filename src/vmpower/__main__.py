from vmpower.cli import main

raise SystemExit(main())
