"""flashduty-bridge: alert webhooks in, durable Flashduty standard events out."""

__version__ = "0.1.0"
