"""The Python client (`client.AvatarClient`), client-side dead reckoning, the demo
(`python -m client_demo`), the load tool (`python -m client_demo.loadtest`) and the
browser viewer."""
