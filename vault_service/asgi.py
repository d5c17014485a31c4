"""ASGI entry point for servers: settings from the environment, fail fast."""

from vault_service.app import create_app
from vault_service.observability import configure_logging
from vault_service.settings import Settings

_settings = Settings.from_env()
configure_logging(_settings.server.log_level)
app = create_app(_settings)
