"""What goes into and comes out of an engine step (server.core.tick_io)."""

import numpy as np
import pytest

from server.core.tick_io import Predictions, StepBatch, TickResult


def arrays(cap: int = 3, H: int = 2, E: int = 4) -> dict[str, np.ndarray]:
    return {
        "t": np.full(cap, np.nan),
        "clock": np.zeros(cap),
        "pos": np.zeros((cap, 3)),
        "off": np.zeros((cap, H, 3), dtype=np.float32),
        "seq": np.full(cap, -1, dtype=np.int64),
        "weights": np.zeros((cap, E)),
    }


@pytest.mark.parametrize("name", ["t", "clock", "pos", "off", "seq", "weights"])
def test_prediction_views_are_read_only(name):
    src = arrays()
    view = getattr(Predictions.of(**src), name)
    with pytest.raises(ValueError):
        view[0] = 1
    with pytest.raises(ValueError):
        view += 1
    assert src[name].flags.writeable  # the source stays the engine's to write
    src[name][0] = 1  # and writing it still works


def test_prediction_views_see_later_writes_to_the_source():
    src = arrays()
    latest = Predictions.of(**src)
    src["t"][1] = 2.5
    src["pos"][1] = (1.0, 2.0, 3.0)
    src["off"][1, -1] = (0.5, 0.0, 0.0)
    src["seq"][1] = 9
    assert latest.t[1] == 2.5 and np.isnan(latest.t[[0, 2]]).all()
    assert latest.pos[1].tolist() == [1.0, 2.0, 3.0]
    assert latest.off[1, -1].tolist() == [0.5, 0.0, 0.0] and latest.seq[1] == 9
    assert latest.pos.base is not None and np.shares_memory(latest.pos, src["pos"])


def test_tick_result_pred_is_position_plus_offsets_and_len_is_its_rows():
    pos = np.array([[1.0, 2.0, 0.0], [10.0, 0.0, 5.0]])
    off = np.array(
        [[[0.5, 0.0, 0.0], [1.0, 0.0, 0.0]], [[0.0, -1.0, 0.25], [0.0, -2.0, 0.5]]],
        dtype=np.float32,
    )
    res = TickResult(
        3, np.array([4, 7]), np.array(["a", "b"], dtype=object), np.array([0.1, 0.2]), pos,
        off, np.array([1, 2]), np.array([False, True]),
    )  # fmt: skip
    assert len(res) == 2 and res.latest is None
    pred = res.pred
    assert pred.shape == (2, 2, 3) and pred.dtype == np.float64
    np.testing.assert_allclose(pred[0, 1], [2.0, 2.0, 0.0])
    np.testing.assert_allclose(pred[1, 0], [10.0, -1.0, 5.25])


def test_step_batch_len_is_its_rows():
    b = StepBatch(1, np.array([0, 2, 5]), np.zeros(3), np.zeros((3, 3)), np.zeros(3), np.zeros(3))
    assert len(b) == 3
