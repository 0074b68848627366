"""The HTTP edge: Slack's request URL, health, and (later) JWKS and pickup pages."""
