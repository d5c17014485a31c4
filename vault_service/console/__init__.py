"""The auditor and DPO console: static assets served by the service itself."""
