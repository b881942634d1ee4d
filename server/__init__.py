"""avatar-stream server core: protocol, features, model, tick engine."""
