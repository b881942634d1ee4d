"""`bench/hostile_fuzz.py`: the seeded fuzzing of `decode_client` finds nothing but
ProtocolError, and is the same for a seed."""

from tests.benches import load

load("hostile.py")  # puts bench/ on the path for its parts

import hostile_fuzz  # noqa: E402


def test_fuzz_is_seeded_and_finds_only_protocol_errors():
    out = hostile_fuzz.fuzz(2000, seed=3, max_size=1024)
    assert out["frames"] == 2000 and out["seed"] == 3
    assert out["other_exceptions"] == {} and out["roundtrip_mismatches"] == 0
    assert sum(out["accepted"].values()) + sum(out["protocol_errors"].values()) == 2000
    assert out["protocol_errors"].get("too_large", 0) > 0  # the oversized ones were made
    # the binary pos decoder saw the tagged frames: some accepted, some refused
    assert out["binary_pos"].get("accepted", 0) > 0 and out["binary_pos"].get("bad_message", 0) > 0
    again = hostile_fuzz.fuzz(2000, seed=3, max_size=1024)
    assert (again["accepted"], again["protocol_errors"], again["binary_pos"]) == (
        out["accepted"],
        out["protocol_errors"],
        out["binary_pos"],
    )
