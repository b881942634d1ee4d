from dataclasses import fields

import pytest

from server.serve.config import Config, build_parser


def test_defaults_are_valid_and_documented():
    c = Config()
    assert c.tick_hz == 20 and c.aoi_cap == 64 and c.compression is False
    assert c.transport == "picows"
    text = build_parser({}).format_help()
    for flag in ("--tick-hz", "--aoi-radius", "--max-frame", "--hello-timeout", "--predictor"):
        assert flag in text
    assert "AVATAR_TICK_HZ" in text


def test_env_overrides_defaults_and_flags_override_env():
    env = {"AVATAR_PORT": "9001", "AVATAR_TICK_HZ": "30", "AVATAR_COMPRESSION": "yes"}
    env["AVATAR_TRANSPORT"] = "websockets"  # compression is the websockets transport's only
    c = Config.from_env(env)
    assert (c.port, c.tick_hz, c.compression) == (9001, 30.0, True)
    c = Config.from_args(["--tick-hz", "10", "--no-compression"], environ=env)
    assert (c.port, c.tick_hz, c.compression) == (9001, 10.0, False)
    c = Config.from_args(["--model", "x.pt", "--predictor", "cv"], environ={})
    assert c.model == "x.pt" and c.predictor == "cv"


@pytest.mark.parametrize(
    "change",
    [
        {"tick_hz": 0},
        {"port": 70000},
        {"predictor": "lstm"},
        {"aoi_cap": 0},
        {"max_frame": 10},
        {"max_hello_frame": 8192},  # over max_frame
        {"idle_timeout": 0.5},
        {"max_msg_rate": 0},
        {"resume_grace": -1},
        {"secret": "short"},
        {"aoi_refresh": 0},
        {"transport": "zmq"},
    ],
)
def test_invalid_values_raise(change):
    with pytest.raises(ValueError):
        Config(**change)


def test_bad_env_value_names_the_variable():
    with pytest.raises(ValueError, match="AVATAR_PORT"):
        Config.from_env({"AVATAR_PORT": "eighty"})


def test_bad_flag_exits(capsys):
    with pytest.raises(SystemExit):
        Config.from_args(["--tick-hz", "-1"], environ={})
    assert "tick_hz" in capsys.readouterr().err


def test_secret_from_the_environment_is_never_shown():
    env = {"AVATAR_SECRET": "s3cret-s3cret-s3cret-42"}
    cfg = Config.from_args([], environ=env)
    assert cfg.secret == "s3cret-s3cret-s3cret-42"
    assert "s3cret" not in repr(cfg)
    assert "s3cret" not in build_parser(env).format_help()


def test_allowed_origins_are_parsed():
    assert Config().origins is None
    cfg = Config(allowed_origins=" https://a.example/ ,https://b.example,, ")
    assert cfg.origins == ("https://a.example", "https://b.example")


def _doc_flags_table() -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    begin, end = "<!-- flags:begin -->\n", "<!-- flags:end -->"
    assert begin in text and end in text, "docs/serving.md lost its flags markers"
    return text.split(begin, 1)[1].split(end, 1)[0]


def test_docs_flags_table_is_generated_from_config():
    from server.serve.config import flags_markdown

    assert _doc_flags_table() == flags_markdown(), (
        "docs/serving.md's flags table is stale: regenerate it from "
        "`python -m server.serve.config` (paste between the flags markers)"
    )


def test_every_flag_of_the_parser_is_in_the_docs_table():
    table = _doc_flags_table()
    flags = [s for a in build_parser({})._actions for s in a.option_strings if s.startswith("--")]
    assert "--tick-hz" in flags and "--no-blend" in flags
    for flag in flags:
        if flag != "--help":
            assert f"`{flag}`" in table, flag
    for f in fields(Config):
        assert f"`AVATAR_{f.name.upper()}`" in table, f.name
