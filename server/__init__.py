"""The avatar-stream server: `core` (pure: protocol, session, features, model, engine,
world, fan-out), `serve` (the asyncio service), `cluster` (rooms sharded over workers).
`python -m server` runs it; docs/architecture.md draws the layers."""
