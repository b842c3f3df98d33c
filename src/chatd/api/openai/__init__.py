"""The OpenAI-compatible surface: its schemas, request decoding, response encoding, routes."""
