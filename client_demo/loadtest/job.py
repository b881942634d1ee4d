"""What one worker process of a load run is given (`WorkerJob`: its share of the clients,
the load, where they connect), and the room of each client (`room_name`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WorkerJob:
    url: str
    first: int  # global index of this worker's first client
    count: int
    total: int
    rate: float
    duration: float
    ramp: float
    rooms: int
    density: float
    sample_every: int
    seed: int
    client: str = "picows"
    t_connect: float = 0.0  # time.time() when the ramp starts; sent once all workers are ready
    protocol: int = 2
    pos_encoding: str = "msgpack"  # "binary": the fixed-layout pos frames (docs/protocol.md)
    settle: float = 1.0  # seconds after the ramp before the measured window starts
    room_urls: dict[str, str] | None = None  # --route: each room's worker URL (else all: url)


def room_name(gi: int, rooms: int) -> str:
    """The room of the client with global index `gi`: rooms are filled round-robin."""
    return f"load{gi % rooms}"
