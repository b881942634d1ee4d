"""What each bot receives, fed to the reckoners that draw the others for it.

Two feeds: the gru feed (`observe_gru`, the server's predicted paths on the bot's own
connection) and the relay feed (`observe_relay`, every sample of every avatar in view on
a protocol 1 spectator, offsets ignored), which stands for a plain relay: what such a
relay would send the bot is counted (`relay_frame_bytes`).
"""

from __future__ import annotations

import time

import numpy as np

from client_demo.players import Bot
from client_demo.scoring import CLASSICAL
from client_demo.send_policy import ThresholdPolicy
from server.core import protocol as P

RELAY_RECORD = 20  # bytes: handle, age, seq, pos: a state record without the GRU's offsets


async def observe_gru(bot: Bot) -> None:
    """The gru feed: every received path to the gru reckoner (and the bot's own to its policy)."""
    c, gru = bot.client, bot.reckoners["gru"]
    async for msg in c:
        if isinstance(msg, P.Welcome):  # a reconnect: views start afresh
            for key in list(gru.keys()):
                gru.remove(key)
            continue
        if isinstance(msg, P.Join | P.Leave):
            encode = P.encode_join if isinstance(msg, P.Join) else P.encode_leave
            bot.view_bytes += len(encode(msg.avatars, msg.handles))
            if isinstance(msg, P.Leave):
                for a in msg.avatars:
                    gru.remove(a)
            continue
        if not isinstance(msg, P.State):
            continue
        now_server = c.clock.to_server(time.monotonic())
        anchors = msg.server_time - msg.age
        for j, h in enumerate(msg.handle.tolist()):
            name = c.names.get(h)
            if name is None:
                continue
            pos, off = msg.pos[j].astype(np.float64), msg.offsets[j].astype(np.float64)
            if name == bot.name:
                if isinstance(bot.policy, ThresholdPolicy):
                    bot.policy.on_own_path(c.clock.to_local(anchors[j]), pos, off, int(msg.seq[j]))
                continue
            gru.update(name, float(anchors[j]), pos, off, now_server)


def relay_frame_bytes(tick: int, server_time: float, n: int) -> int:
    """Size of a plain relay's `state` frame with `n` records: the v1 frame without offsets."""
    return len(P.StateFramer(tick, server_time, 0, 2).frame(n, bytes(RELAY_RECORD * n)))


async def observe_relay(bot: Bot) -> None:
    """The relay feed: every new sample to the classical reckoners (offsets ignored).

    The spectator sees the whole room; it stands for a plain relay that sends the bot its
    own view (the avatars of its gru connection's view, itself included as v1 does) every
    tick: only those are drawn (an avatar starts afresh when it enters the view again)
    and counted in the relay's records and bytes.
    """
    c, kf = bot.relay, bot.kalman
    assert c is not None and kf is not None
    plain = [bot.reckoners[m] for m in CLASSICAL if m != "kalman"]
    kalman = bot.reckoners["kalman"]
    classical = [*plain, kalman]
    last_seq: dict[str, int] = {}
    async for msg in c:
        if isinstance(msg, P.Welcome):  # a reconnect: start afresh
            for r in classical:
                for key in list(r.keys()):
                    r.remove(key)
            kf.clear()
            last_seq.clear()
            continue
        if isinstance(msg, P.Leave):
            for a in msg.avatars:
                for r in classical:
                    r.remove(a)
                kf.remove(a)
                last_seq.pop(a, None)
            continue
        if not isinstance(msg, P.State):
            continue
        now_server = bot.client.clock.to_server(time.monotonic())  # the one clock of the bot
        view = set(bot.client.names.values())
        for key in [k for k in kalman.keys() if k not in view]:  # noqa: SIM118 (not a dict)
            for r in classical:  # it left the view: a relay would have sent its leave
                r.remove(key)
            kf.remove(key)
            last_seq.pop(key, None)
        keys, rows, shown = [], [], 0
        for j, h in enumerate(msg.handle.tolist()):
            name = c.names.get(h)
            if name is None or name not in view:
                continue
            shown += 1
            seq = int(msg.seq[j])
            if name != bot.name and last_seq.get(name) != seq:  # a repeat changes nothing
                last_seq[name] = seq
                keys.append(name)
                rows.append(j)
        bot.relay_records += shown
        bot.relay_bytes += relay_frame_bytes(msg.tick, msg.server_time, shown)
        if not keys:
            continue
        anchors = (msg.server_time - msg.age)[rows]
        pos = msg.pos[rows].astype(np.float64)
        for i, key in enumerate(keys):
            for r in plain:
                r.update(key, float(anchors[i]), pos[i], None, now_server)
        new, offsets = kf.update(keys, anchors, pos)
        for i, off in zip(new, offsets, strict=True):
            kalman.update(keys[i], float(anchors[i]), pos[i], off, now_server)
