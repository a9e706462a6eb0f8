"""The OpenAI-compatible HTTP server: request models, response builders, errors and routes."""
