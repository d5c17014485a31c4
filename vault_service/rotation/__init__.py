"""Key inventory and online rotations (`vault-service keys status|rotate`)."""
