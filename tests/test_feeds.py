"""`client_demo.feeds`: what a plain relay would send a bot."""


def test_relay_frames_are_v1_frames_without_offsets():
    import numpy as np

    from client_demo.feeds import RELAY_RECORD, relay_frame_bytes
    from server.core import protocol as P

    n, nh = 3, 10
    rec = P.pack_records(np.arange(n), np.zeros(n), np.arange(n), np.zeros((n, 3)),
                         np.zeros((n, nh, 3)), 2)  # fmt: skip
    v1 = P.encode_state(7, 1.7e9, rec, n, nh, 2)
    assert relay_frame_bytes(7, 1.7e9, n) == len(v1) - n * 2 * nh * 2
    assert P.record_dtype(nh, 2).itemsize - 2 * nh * 2 == RELAY_RECORD
