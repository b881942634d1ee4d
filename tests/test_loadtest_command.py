"""The load tool's command line (`client_demo.loadtest.command`): its help, the flags it
refuses, a server that is not there."""

from __future__ import annotations

import pytest

from client_demo.loadtest import main


def test_help_states_the_process_rule(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "ceil(clients / 350)" in out and "--protocol" in out and "--report-timeout" in out
    assert "--route" in out and "GET /route" in out and "comma list" in out


@pytest.mark.parametrize("bad", [["--processes", "0"], ["--processes", "many"],
                                 ["--protocol", "3"], ["--server-pid", "12,x"]])  # fmt: skip
def test_cli_refuses_bad_processes_and_protocol(bad, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--url", "ws://127.0.0.1:1/", *bad])
    assert e.value.code == 2
    assert bad[0] in capsys.readouterr().err


def test_cli_refuses_a_missing_server(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--url", "ws://127.0.0.1:1/", "--clients", "1", "--duration", "1"])
    assert e.value.code == 1
    assert "http://127.0.0.1:1/metrics" in capsys.readouterr().err
