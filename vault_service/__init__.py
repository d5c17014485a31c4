"""vault-service: youth case records with field-level encryption and a verifiable access log."""

__version__ = "0.1.0"
