"""Every command answers a user's mistake with one line on stderr, never a traceback.

Each case runs a console script (or ``python -m``, or a bench/ script) as a real process and
checks the exit status (2: usage, 1: any other user error, 130: Ctrl-C), that stderr has no
traceback, and that the message names the file:line, URL or device. The in-process tests
at the end pin `server.cli` itself (a real bug keeps its traceback).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from server import cli

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TIMEOUT = 60  # seconds for one command (most take 2-3: importing torch)

SCRIPTS = {  # console script -> module (pyproject.toml's [project.scripts])
    "avatar-server": "server",
    "avatar-demo": "client_demo",
    "avatar-loadtest": "client_demo.loadtest",
    "avatar-train": "training.train",
    "avatar-evaluate": "training.evaluate",
    "avatar-simulate": "training.simulate",
    "avatar-ethucy": "training.ethucy",
}


def command(name: str) -> list[str]:
    """The installed console script, else ``python -m`` its module; bench/*.py as scripts."""
    if name.startswith("bench/"):
        return [sys.executable, str(REPO / name)]
    script = BIN / name
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", SCRIPTS[name]]


def run(name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_")}
    full_env |= {"PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [*command(name), *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def check(p: subprocess.CompletedProcess, code: int, *names: str) -> str:
    """Exit status `code`, no traceback, one error line on stderr naming every `names`."""
    err = p.stderr
    assert "Traceback" not in err, err
    assert p.returncode == code, (p.returncode, err)
    lines = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert lines, err
    last = lines[-1]
    for name in names:
        assert name in last, (name, last)
    return last


def closed_port() -> int:
    """A loopback port with nothing listening (bound, read, closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def no_real_data() -> list[str]:
    """Flags that keep training off the real-motion sets, where it has them (slow to load)."""
    import dataclasses

    from training.train_config import TrainConfig

    return ["--real", "none"] if "real" in {f.name for f in dataclasses.fields(TrainConfig)} else []


no_gpu = pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="needs a machine without a GPU"
)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A malformed CSV (line 3), a file that is not a checkpoint, a good checkpoint."""
    from server.core.features import FeatureConfig
    from server.core.model import ModelConfig, MotionGRU, save_checkpoint

    d = tmp_path_factory.mktemp("cli")
    bad = d / "bad.csv"
    bad.write_text("user_id,timestamp,x,y\na,0,1,2\na,zz,1,2\n")
    garbage = d / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint\xff" * 8)
    good = d / "good.pt"
    save_checkpoint(good, MotionGRU(ModelConfig(hidden=8, head_hidden=8)), FeatureConfig())
    a_file = d / "a_file"
    a_file.write_text("")
    return {"bad": bad, "garbage": garbage, "good": good, "dir": d, "a_file": a_file}


# -- data files ---------------------------------------------------------------------------------


def test_evaluate_names_the_bad_line(files):
    p = run("avatar-evaluate", "--data", str(files["bad"]), "--model", str(files["good"]))
    check(p, 1, f"{files['bad']}:3", "zz")


def test_evaluate_names_a_missing_data_file(files):
    p = run("avatar-evaluate", "--data", "/nonexistent.csv", "--model", str(files["good"]))
    check(p, 1, "/nonexistent.csv")


def test_evaluate_names_a_bad_data_spec(files):
    p = run("avatar-evaluate", "--data", "synthetic:x", "--model", str(files["good"]))
    check(p, 1, "synthetic:x")


def test_train_names_the_bad_line(files):
    out = files["dir"] / "m.pt"
    p = run("avatar-train", "--data", str(files["bad"]), "--no-ethucy", *no_real_data(),
            "--synthetic-avatars", "0", "--out", str(out), "--device", "cpu")  # fmt: skip
    check(p, 1, f"{files['bad']}:3")


def test_train_names_a_missing_preset():
    check(run("avatar-train", "--preset", "no-such-preset"), 1, "no-such-preset")


def test_simulate_names_an_unwritable_out(files):
    out = files["a_file"] / "x.csv"  # under a file, not a directory
    p = run("avatar-simulate", "--avatars", "1", "--duration", "1", "--out", str(out))
    check(p, 1, str(out))


def test_ethucy_names_a_missing_data_directory(files):
    missing = str(files["dir"] / "no-ethucy")
    p = run("avatar-ethucy", "--scenes", "eth", env={"AVATAR_ETHUCY": missing})
    check(p, 1, missing, "AVATAR_ETHUCY")


def test_report_names_a_missing_directory_and_a_malformed_file(files):
    check(run("bench/report.py", str(files["dir"] / "nope")), 1, "nope")
    d = files["dir"] / "targets"
    d.mkdir()
    (d / "bench.json").write_text('[\n  {"avatars": ,}\n]\n')
    check(run("bench/report.py", str(d)), 1, f"{d / 'bench.json'}:2")


# -- checkpoints --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("avatar-evaluate", ["--data", "synthetic:2:5:2"]),
        ("bench/engine.py", ["--avatars", "2", "--ticks", "1", "--device", "cpu"]),
        ("avatar-demo", ["--port", "0", "--duration", "1", "--bots", "1"]),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_named(files, name, extra):
    p = run(name, "--model", str(files["garbage"]), *extra)
    line = check(p, 1, str(files["garbage"]), "not a checkpoint")
    assert "training.train" in line  # what to do


def test_server_names_a_missing_checkpoint():
    p = run("avatar-server", "--port", "0", "--model", "/nope.pt")
    check(p, 1, "/nope.pt", "cannot start")


# -- devices ------------------------------------------------------------------------------------


@no_gpu
@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("bench/engine.py", ["--avatars", "2", "--ticks", "1", "--model", "{good}"]),
        ("avatar-evaluate", ["--data", "synthetic:2:5:2", "--model", "{good}"]),
        ("avatar-train", ["--no-ethucy", "--synthetic-avatars", "1", "--out", "{dir}/t.pt"]),
    ],
)
def test_a_missing_gpu_is_named(files, name, extra):
    p = run(name, "--device", "cuda", *(a.format(**files) for a in extra))
    check(p, 1, "'cuda'", "--device cpu")


def test_a_device_that_is_no_device_is_named(files):
    p = run("bench/engine.py", "--device", "banana", "--model", str(files["good"]))
    check(p, 1, "'banana'")


# -- servers that are not there -----------------------------------------------------------------


def test_loadtest_names_a_refusing_server():
    port = closed_port()
    p = run("avatar-loadtest", "--url", f"ws://127.0.0.1:{port}/", "--clients", "1",
            "--duration", "1")  # fmt: skip
    check(p, 1, f"127.0.0.1:{port}", "refused")


def test_demo_names_a_refusing_server():
    port = closed_port()
    p = run("avatar-demo", "--url", f"ws://127.0.0.1:{port}/", "--duration", "1", "--bots", "1")
    check(p, 1, f"ws://127.0.0.1:{port}/", "refused")


@pytest.mark.parametrize(
    ("script", "extra"),
    [("bench/capacity.py", ["--clients", "1", "--predictors", "gru"]),
     ("bench/hostile.py", ["--fuzz", "0"])],
)  # fmt: skip
def test_bench_scripts_name_a_server_that_does_not_start(script, extra):
    p = run(script, *extra, "--server-args", "--model /nope.pt")
    check(p, 1, "/nope.pt", "did not start")


# -- usage: argparse's exit status 2 ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "args", "named"),
    [
        ("avatar-evaluate", ["--data", "x.csv", "--noise", "abc"], "--noise"),
        ("avatar-loadtest", ["--url", "http://127.0.0.1:1/"], "http://127.0.0.1:1/"),
        ("avatar-loadtest", ["--clients", "0"], "clients"),
        ("avatar-demo", ["--url", "ws://127.0.0.1:x/"], "ws://127.0.0.1:x/"),
        ("avatar-demo", ["--bots", "0"], "--bots"),
        ("bench/engine.py", ["--avatars", "lots"], "lots"),
        ("avatar-ethucy", ["--scenes", "mars"], "mars"),
        ("avatar-server", ["--port", "99999"], "port"),
        ("avatar-server", ["token", "--avatar", "a", "--room", "r"], "AVATAR_SECRET"),
        ("avatar-simulate", ["--avatars", "0", "--out", "x.csv"], "avatars"),
        ("bench/capacity.py", ["--clients", "many"], "many"),
    ],
)
def test_usage_errors_exit_2(name, args, named):
    check(run(name, *args), 2, named)


# -- the console scripts' exit status on success ------------------------------------------------


def test_a_command_that_returns_figures_exits_0(files):
    p = run("bench/engine.py", "--avatars", "2", "--ticks", "1", "--device", "cpu",
            "--model", str(files["good"]))  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr


# -- Ctrl-C -------------------------------------------------------------------------------------


def test_ctrl_c_during_training_keeps_the_checkpoint_and_says_where(files):
    out = files["dir"] / "interrupted.pt"
    args = ["--no-ethucy", "--synthetic-avatars", "2", "--synthetic-val-avatars", "1",
            "--synthetic-duration", "8", "--hidden", "8", "--head-hidden", "8",
            "--epochs", "100000", "--patience", "100000", "--max-batches", "1",
            "--device", "cpu", "--threads", "1", "--out", str(out), *no_real_data()]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_")}
    proc = subprocess.Popen(
        [*command("avatar-train"), *args],
        cwd=REPO,
        env=env | {"PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in proc.stdout:  # the first epoch's line: a checkpoint is written by then
            if line.startswith("epoch "):
                break
        else:
            pytest.fail(f"training ended before an epoch: {proc.communicate()[1]}")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in err, err
    assert proc.returncode == cli.EXIT_INTERRUPTED, err
    last = err.strip().splitlines()[-1]
    assert "interrupted" in last and str(out) in last, last
    assert out.exists()


# -- server.cli in-process ----------------------------------------------------------------------


def test_a_bug_keeps_its_traceback():
    @cli.command("prog")
    def main(argv=None):
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        main([])


def test_user_errors_are_one_line_and_exit_1(capsys, tmp_path):
    @cli.command("prog")
    def main(argv=None):
        open(tmp_path / "missing.txt").close()

    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prog: error: ")
    assert str(tmp_path / "missing.txt") in err


def test_foreign_errors_are_recognised_by_name_without_importing_them():
    DatasetError = type("DatasetError", (ValueError,), {"__module__": "training.datasets"})
    assert cli.describe(DatasetError("f.csv:3: bad timestamp value 'zz'")).startswith("f.csv:3:")
    assert cli.describe(ValueError("f.csv:3: bad")) is None


def test_return_value_when_called_with_argv_exit_status_from_the_command_line(monkeypatch):
    @cli.command("prog")
    def main(argv=None):
        return {"figures": 1}

    assert main([]) == {"figures": 1}
    monkeypatch.setattr(sys, "argv", ["prog"])
    assert main() == 0


def test_interrupted_says_what_was_kept(capsys):
    @cli.command("prog")
    def main(argv=None):
        raise cli.Interrupted("partial results in out.json")

    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 130
    assert capsys.readouterr().err == "prog: interrupted; partial results in out.json\n"


def test_server_cli_imports_neither_client_demo_nor_training():
    code = "import sys, server.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in ('client_demo', 'training', 'torch')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_server_cli_imports_no_other_module_of_the_project():
    """The bottom of every package's imports: not even inside a function (static)."""
    import ast

    tree = ast.parse((REPO / "server" / "cli.py").read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    project = ("server", "client_demo", "training", "bench", "tests")
    assert [m for m in names if m.split(".")[0] in project] == []
