"""``python -m server`` / ``avatar-server``: run the WebSocket server until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from server import runner
from server.app import AvatarServer
from server.config import Config


async def run(config: Config) -> None:
    """Serve `config` until SIGINT/SIGTERM, then shut down gracefully."""
    server = AvatarServer(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.request_shutdown)
    await server.serve()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags and environment (see ``--help``), serve, return the exit status."""
    config = Config.from_args(argv)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        runner.run(run(config))
    except (FileNotFoundError, ValueError, OSError) as e:
        logging.getLogger("avatar_stream").error("cannot start: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
