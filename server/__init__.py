"""OpenAI-compatible HTTP server over the cascade."""
