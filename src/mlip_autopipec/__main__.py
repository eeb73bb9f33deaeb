from mlip_autopipec.cli import main

raise SystemExit(main())
