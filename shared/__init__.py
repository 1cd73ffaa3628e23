"""ragstream's contracts package: event schemas, settings, logging and store adapters."""
