"""Integrations with other libraries, each importable only where that library is installed."""
