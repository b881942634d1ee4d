"""``python -m server`` / ``avatar-server``: run the WebSocket server until SIGINT/SIGTERM.

``avatar-server token --avatar A --room R [--ttl S] [--secret K]`` prints a join token
instead (see `server.core.auth`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from server import cli
from server.core import auth, model_cli
from server.serve import runner
from server.serve.config import Config

SECRET_ENV = "AVATAR_SECRET"


async def run(config: Config) -> None:
    """Serve `config` until SIGINT/SIGTERM, then shut down gracefully."""
    from server.serve.app import AvatarServer  # torch and the rest: only when serving

    server = AvatarServer(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.request_shutdown)
    loop.add_signal_handler(signal.SIGHUP, server.request_reload)  # new checkpoint, no drops
    await server.serve()


def token_main(argv: Sequence[str]) -> int:
    """``avatar-server token ...``: print one join token to stdout, return 0.

    Exits with status 2 (argparse's SystemExit, a message on stderr) on bad flags, a bad
    avatar, room or ttl, or when neither ``--secret`` nor ``AVATAR_SECRET`` gives a secret.
    """
    parser = argparse.ArgumentParser(
        prog="avatar-server token",
        description='Print a signed join token (JWT, HS256) for a hello\'s "token".',
    )
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--avatar", help="the avatar id the token admits")
    who.add_argument("--spectator", action="store_true", help="a token for a spectator")
    parser.add_argument("--room", required=True, help="the room the token admits to")
    parser.add_argument(
        "--ttl", type=float, default=3600.0, help="lifetime in seconds (default: 3600)"
    )
    parser.add_argument(
        "--secret",
        help=f"the signing secret (default: ${SECRET_ENV}; prefer the variable, "
        "as flags show in process lists and shell history)",
    )
    args = parser.parse_args(list(argv))
    secret = args.secret if args.secret is not None else os.environ.get(SECRET_ENV, "")
    if not secret:
        parser.error(f"no secret: pass --secret or set {SECRET_ENV}")
    try:
        token = auth.mint_token(secret, args.avatar, args.room, args.ttl)
    except ValueError as e:
        parser.error(str(e))
    print(token)
    return 0


@cli.command("avatar-server")
def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags and environment (see ``--help``), serve, return the exit status.

    ``token`` as the first argument mints a join token instead (`token_main`). A device
    that is not there, a missing or foreign checkpoint, an address in use: one
    ``cannot start: ...`` log line and 1.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["token"]:
        return token_main(args[1:])
    config = Config.from_args(argv)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if config.redis:
            from server.cluster.directory_cli import check_redis

            check_redis(config.redis)  # first: one clear line, before torch is loaded
        model_cli.check_device(config.device)  # before the server: a message that says what to do
        if config.predictor == "gru":
            model_cli.load_model(config.model, "cpu")
        if config.workers > 1:
            from server.cluster.supervisor import Supervisor

            return Supervisor(config, args).run()
        runner.run(run(config))
    except (cli.UserError, ValueError, OSError) as e:
        why = cli.describe(e) or cli.first_line(e)
        logging.getLogger("avatar_stream").error("cannot start: %s", why)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
