"""relay: a webhook relay and replay proxy for Mailchimp."""

__version__ = "0.1.0"

__all__ = ["__version__"]
