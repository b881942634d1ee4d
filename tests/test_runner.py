import pytest

from server.serve.runner import run


def test_run_returns_the_result_and_raises_what_the_coroutine_raises():
    async def value():
        return 42

    async def boom():
        raise KeyError("x")

    assert run(value()) == 42
    with pytest.raises(KeyError):
        run(boom())
