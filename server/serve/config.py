"""Server configuration: one `Config` from defaults, ``AVATAR_*`` environment variables and CLI flags.

Precedence: flag > environment > default. Every field is a flag (``tick_hz`` ->
``--tick-hz``) and an environment variable (``AVATAR_TICK_HZ``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

from server.serve.transports import TRANSPORTS

ENV_PREFIX = "AVATAR_"


@dataclass(frozen=True)
class Config:
    """Everything the server can be told. See ``python -m server --help``."""

    host: str = "127.0.0.1"
    port: int = 8765
    tick_hz: float = 20.0
    model: str | None = None
    predictor: str = "gru"
    blend: bool = True
    device: str = "auto"
    threads: int = 1
    aoi_radius: float = 30.0
    aoi_cap: int = 64
    aoi_refresh: int = 4
    spectator_cap: int = 1024
    max_frame: int = 4096
    max_frame_hard: int = 65536
    max_hello_frame: int = 2048
    hello_timeout: float = 5.0
    idle_timeout: float = 30.0
    max_msg_rate: float = 120.0
    resume_grace: float = 10.0
    secret: str | None = field(default=None, repr=False)
    allowed_origins: str = ""
    watch_model: bool = False
    send_buffer: int = 262144
    max_dropped: int = 40
    max_connections: int = 10000
    max_room_avatars: int = 4096
    shutdown_timeout: float = 2.0
    switch_interval: float = 0.0005
    inline_step_ms: float = 5.0
    compression: bool = False
    transport: str = "picows"
    dr_threshold: float = 0.02
    dr_heartbeat: float = 1.0
    dr_lookahead: float = 0.3
    workers: int = 1
    redis: str | None = field(default=None, repr=False)
    advertise_url: str | None = None
    cluster_prefix: str = "avatar"
    directory_ttl: float = 2.0
    cluster_nonce: str | None = None
    log_level: str = "info"

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.port <= 65535, "port must be 0..65535"),
            (0 < self.tick_hz <= 1000, "tick_hz must be in (0, 1000]"),
            (self.predictor in ("gru", "cv"), "predictor must be gru or cv"),
            (self.threads >= 1, "threads must be >= 1"),
            (self.aoi_radius > 0, "aoi_radius must be > 0"),
            (self.aoi_cap >= 1, "aoi_cap must be >= 1"),
            (self.aoi_refresh >= 1, "aoi_refresh must be >= 1"),
            (self.spectator_cap >= 1, "spectator_cap must be >= 1"),
            (64 <= self.max_frame <= self.max_frame_hard, "need 64 <= max_frame <= max_frame_hard"),
            (self.hello_timeout > 0, "hello_timeout must be > 0"),
            (
                64 <= self.max_hello_frame <= self.max_frame,
                "need 64 <= max_hello_frame <= max_frame",
            ),
            (self.idle_timeout >= 1.0, "idle_timeout must be >= 1 s"),
            (self.max_msg_rate >= 1.0, "max_msg_rate must be >= 1 message/s"),
            (self.resume_grace >= 0, "resume_grace must be >= 0"),
            (self.secret is None or len(self.secret) >= 16, "secret must be >= 16 characters"),
            (self.send_buffer >= 1024, "send_buffer must be >= 1024 bytes"),
            (self.max_dropped >= 1, "max_dropped must be >= 1"),
            (self.max_connections >= 1, "max_connections must be >= 1"),
            (1 <= self.max_room_avatars <= 65535, "max_room_avatars must be 1..65535"),
            (self.shutdown_timeout > 0, "shutdown_timeout must be > 0"),
            (1e-6 <= self.switch_interval <= 0.1, "switch_interval must be in [1e-6, 0.1]"),
            (0 <= self.inline_step_ms <= 50, "inline_step_ms must be in [0, 50]"),
            (0 <= self.dr_threshold <= 100, "dr_threshold must be in [0, 100] m"),
            (0 < self.dr_heartbeat <= 60, "dr_heartbeat must be in (0, 60] s"),
            (0 <= self.dr_lookahead <= 10, "dr_lookahead must be in [0, 10] s"),
            (1 <= self.workers <= 256, "workers must be 1..256"),
            (self.workers == 1 or self.redis, "--workers > 1 needs --redis (the room directory)"),
            (self.workers == 1 or self.port > 0, "--workers > 1 needs a fixed --port (not 0)"),
            (self.port + self.workers - 1 <= 65535, "port + workers - 1 must be <= 65535"),
            (
                not self.redis or self.redis.startswith(("redis://", "rediss://", "unix://")),
                "redis must be a redis://, rediss:// or unix:// URL",
            ),
            (self.directory_ttl >= 0.5, "directory_ttl must be >= 0.5 s"),
            (
                not self.advertise_url or self.advertise_url.startswith(("ws://", "wss://")),
                "advertise_url must be a ws:// or wss:// URL",
            ),
            (self.transport in TRANSPORTS, "transport must be websockets or picows"),
            (
                not (self.compression and self.transport != "websockets"),
                "compression needs --transport websockets",
            ),
            (
                self.log_level in ("debug", "info", "warning", "error"),
                "log_level: debug|info|warning|error",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def tick_period(self) -> float:
        return 1.0 / self.tick_hz

    @property
    def origins(self) -> tuple[str, ...] | None:
        """Allowed browser origins (None: any). A request without Origin (not a browser)
        is always allowed."""
        items = tuple(o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip())
        return items or None

    def replace(self, **changes) -> Config:
        """A copy with `changes` applied (validated again). Raises ValueError."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Defaults overridden by ``AVATAR_<FIELD>`` variables. Raises ValueError on a bad value."""
        return cls(**_env_values(os.environ if environ is None else environ))

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> Config:
        """Parse CLI flags over the environment over defaults. Exits (argparse) on bad flags."""
        parser = build_parser(environ)
        ns = parser.parse_args(argv)
        try:
            return cls(**{f.name: getattr(ns, f.name) for f in fields(cls)})
        except ValueError as e:
            parser.error(str(e))
            raise  # unreachable: parser.error exits


HELP = {
    "host": "interface to listen on (0.0.0.0 for all)",
    "port": "TCP port for WebSocket and HTTP (/healthz, /metrics, / viewer); 0 picks a free one",
    "tick_hz": "ticks per second: one model step and one state frame per client each tick",
    "model": "checkpoint path (default: the shipped server/models/avatar_gru.pt)",
    "predictor": "gru (the model) or cv (constant-velocity dead reckoning, model off)",
    "blend": "serve the online blend of the network with the classical experts (two Kalman "
    "filters, constant velocity, a turning model, two IMMs), weighted per avatar and horizon "
    "by how each one's earlier predictions turned out (server.core.blend); --no-blend: the "
    "network alone (what the blend costs: docs/performance.md)",
    "device": "auto, cpu, cuda or cuda:N for the model step",
    "threads": "CPU threads for the model step, torch's and the neighbour search's (1 "
    "leaves the other cores to I/O)",
    "aoi_radius": "area-of-interest radius in metres: players see avatars this close",
    "aoi_refresh": "recompute each player's view every this many ticks, a share of the "
    "players each tick (1: every view every tick); positions in frames are always current",
    "aoi_cap": "most avatars in one player's view (nearest first, itself included)",
    "spectator_cap": "most avatars in one spectator's view",
    "max_frame": "largest client frame in bytes; bigger gets error too_large and close 1009",
    "max_frame_hard": "WebSocket max_size: bigger frames are cut off by the WebSocket layer (1009)",
    "max_hello_frame": "largest frame before hello is accepted (bytes); bigger: too_large, 1009",
    "hello_timeout": "seconds a new connection has to send hello (else close 1008)",
    "idle_timeout": "seconds without any message or pong before a connection is closed (1008); "
    "the server pings every connection every idle_timeout / 3",
    "max_msg_rate": "messages per second per connection (burst: one second's worth); excess "
    "is dropped, a sustained excess closes the connection (rate_limited, 1008)",
    "resume_grace": "seconds an abruptly disconnected avatar keeps its slot and hidden state "
    "for a reconnect with its resume token (0: removed at once)",
    "secret": "HMAC secret for join tokens: when set, hello needs a valid token for its avatar "
    "and room (else unauthorized, 1008); mint with `avatar-server token`. Prefer the "
    "environment variable to the flag (flags show in ps)",
    "allowed_origins": "comma-separated browser origins allowed to connect "
    "(e.g. https://app.example); empty: any. Requests without Origin are not from browsers",
    "watch_model": "reload the checkpoint when its file changes (as SIGHUP does)",
    "send_buffer": "bytes buffered to one client before its state frames are dropped",
    "max_dropped": "consecutive dropped state frames before a slow client is closed (1008)",
    "max_connections": "most open WebSocket connections (more get close 1013)",
    "max_room_avatars": "most players in one room (more get close 1013)",
    "shutdown_timeout": "seconds to close every client (1001) on SIGINT/SIGTERM",
    "switch_interval": "Python GIL switch interval in seconds while serving (short: the model-step "
    "thread is not kept waiting behind socket I/O; Python's default is 0.005)",
    "inline_step_ms": "a CPU model step predicted (from a measured cost per avatar) to take "
    "at most this many ms runs on the event loop; a longer one runs in a thread, and from the "
    "first long step of 256+ avatars in a step worker process (server.serve.stepper); 0: never on "
    "the loop",
    "compression": "offer permessage-deflate (costs CPU per frame; off by default)",
    "transport": "WebSocket library: picows (Cython framing, several times less CPU per "
    "message) or websockets (the reference implementation; needed for --compression); "
    "same protocol and behaviour",
    "dr_threshold": "downlink dead reckoning (protocol v2 clients): an avatar's record is resent "
    "when its newest sample is more than this many metres off the path its viewers last got "
    "(0: whenever it moved); v1 clients get every avatar every tick",
    "dr_lookahead": "downlink dead reckoning: an avatar's record is also resent when its new "
    "predicted path is more than --dr-threshold off the one its viewers hold at a horizon up "
    "to this many seconds ahead (0: compare the newest sample only; more: more records, "
    "less render error)",
    "dr_heartbeat": "seconds after which an avatar's record is resent to v2 clients even when "
    "its path still holds (and a v2 client that got nothing for this long gets an empty "
    "state frame: a clock heartbeat)",
    "workers": "worker processes on this machine, worker k on --port + k, each serving whole "
    "rooms (needs --redis); 1: this process serves",
    "redis": "Redis URL of the room directory (e.g. redis://127.0.0.1:6379/0): workers that "
    "share it form one cluster and route each room to the worker that serves it; unset: "
    "one process, no Redis",
    "advertise_url": "the WebSocket URL clients reach this worker at (a cluster worker behind "
    "NAT or a proxy); default ws://HOST:PORT/ (this machine's name when HOST is 0.0.0.0)",
    "cluster_prefix": "key prefix in Redis: clusters sharing one Redis use different ones",
    "directory_ttl": "seconds a worker's and its rooms' directory entries live without a "
    "heartbeat (heartbeats every ttl/4): how long a dead worker on another machine holds "
    "its rooms",
    "cluster_nonce": "(set by --workers for its workers) the worker's directory nonce",
    "log_level": "debug, info, warning or error",
}


CHOICES = {
    "predictor": ("gru", "cv"),
    "transport": TRANSPORTS,
    "log_level": ("debug", "info", "warning", "error"),
}


def _field_type(f: dataclasses.Field) -> type:
    t = f.type if isinstance(f.type, str) else f.type.__name__
    return {"int": int, "float": float, "bool": bool}.get(t.split(" |")[0], str)


def _parse_bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {s!r}")


def _env_values(environ: Mapping[str, str]) -> dict:
    out = {}
    for f in fields(Config):
        key = ENV_PREFIX + f.name.upper()
        if key not in environ:
            continue
        raw, kind = environ[key], _field_type(f)
        try:
            out[f.name] = _parse_bool(raw) if kind is bool else kind(raw)
        except ValueError as e:
            raise ValueError(f"{key}={raw!r}: {e}") from None
    return out


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The ``python -m server`` argument parser, with defaults taken from the environment."""
    defaults = Config()
    env = _env_values(os.environ if environ is None else environ)
    p = argparse.ArgumentParser(
        prog="avatar-server",
        description="avatar-stream: WebSocket server pushing GRU-predicted avatar paths. "
        f"Every flag can also be set as an environment variable {ENV_PREFIX}<FLAG> "
        "(e.g. AVATAR_TICK_HZ=30); flags win.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        default = env.get(f.name, getattr(defaults, f.name))
        kind = _field_type(f)
        help_ = HELP[f.name] + f" [env {ENV_PREFIX}{f.name.upper()}]"
        if f.name == "secret":  # never print it (its default may come from the environment)
            help_ += "%(default).0s"
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_)
        else:
            p.add_argument(
                flag, type=kind, default=default, choices=CHOICES.get(f.name), help=help_
            )
    return p


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_default(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`on`" if value else "`off`"
    if value == "":
        return '`""`'
    return f"`{value}`"


def flags_markdown() -> str:
    """The Markdown table of every server flag: flag, variable, default, help.

    Built from `build_parser` with an empty environment (the defaults are `Config`'s own),
    so it lists exactly what ``python -m server --help`` does. ``docs/serving.md`` holds a
    copy between ``<!-- flags:begin -->`` and ``<!-- flags:end -->`` (a test compares them);
    regenerate it with ``python -m server.serve.config``.
    """
    rows = [
        "| flag | environment | default | what it does |",
        "|---|---|---|---|",
    ]
    for action in build_parser({})._actions:
        if action.dest not in HELP:  # --help
            continue
        flag = " / ".join(f"`{s}`" for s in action.option_strings)
        help_ = HELP[action.dest]
        cells = (
            flag,
            f"`{ENV_PREFIX}{action.dest.upper()}`",
            _markdown_default(action.default),
            _markdown_cell(help_),
        )
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m server.serve.config: print the flags table
    print(flags_markdown(), end="")
