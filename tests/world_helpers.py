"""Shared test helpers: a small `World` over a CPU engine, ticked by hand, its frames decoded."""

from __future__ import annotations

from server.core import protocol as P
from server.core.engine import TickEngine
from server.core.world import World


def hello(v: int = 1, **kw) -> P.Hello:
    """v1 unless `v` is given (every avatar every tick)."""
    return P.Hello(v=v, **kw)


def make_world(**kw) -> World:
    return World(TickEngine(None, device="cpu", capacity=2), **kw)


def tick(world: World, server_time: float) -> dict:
    world.begin_tick()
    result = world.engine.tick()
    members = world.fan_out(result, server_time)
    out = {}
    for m in members:
        msgs = [P.decode_server(f) for f in m.outbox.controls]
        msgs += [P.decode_server(m.outbox.state)] if m.outbox.state is not None else []
        m.outbox.controls.clear()
        m.outbox.state = None
        out[m.avatar or f"spectator{m.uid}"] = msgs
    return out


def names(msgs, handles_to_names) -> list[str]:
    state = msgs[-1]
    assert isinstance(state, P.State)
    return [handles_to_names[h] for h in state.handle.tolist()]


def pos(seq, t, p):
    return P.Pos(seq=seq, t=t, p=tuple(map(float, p)))


def records(msgs, handle) -> dict:
    """avatar -> (seq, pos x) of the records in this tick's state frame (none: {})."""
    states = [m for m in msgs if isinstance(m, P.State)]
    if not states:
        return {}
    st = states[-1]
    rows = zip(st.handle, st.seq, st.pos[:, 0], strict=True)
    return {handle[h]: (int(q), float(x)) for h, q, x in rows}
