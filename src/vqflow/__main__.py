from vqflow.cli import main

raise SystemExit(main())
