"""`python -m vault_service.cli`: the admin CLI, as the `vault-service` script."""

from vault_service.cli import main

raise SystemExit(main())
