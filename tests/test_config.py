"""Configuration is validated once; every mistake names the key, the file and the fix."""

import json
import os
from pathlib import Path

import pytest

from bbsd import config
from bbsd.errors import ConfigError
from tests.conftest import run_bbsd, write_config


def _cfg(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "bbsd.toml"
    path.write_text(body)
    return path


MINIMAL = '[watch]\nfolders = ["in"]\n[model]\npath = "m/t.gguf"\nmmproj = "m/p.gguf"\n'


def test_defaults_and_relative_paths_resolve_against_the_config_folder(tmp_path):
    s = config.load(_cfg(tmp_path, MINIMAL), environ={})
    assert s.watch.folders == ((tmp_path / "in").resolve(),)
    assert s.backend.path == (tmp_path / "m/t.gguf").resolve()
    assert s.backend.context_size == 4096 and s.watch.recursive is True
    with pytest.raises(AttributeError):
        s.backend.threads = 3  # frozen


def test_the_shipped_config_is_valid():
    s = config.load(Path(__file__).parent.parent / "config.toml", environ={})
    assert s.catalog.character_names() == ("Baba Yaga", "Koschei")


def test_misspelt_key_names_key_file_and_suggestion(tmp_path):
    path = _cfg(tmp_path, MINIMAL + "[engine]\ncontext_sise = 2048\n")
    with pytest.raises(ConfigError) as e:
        config.load(path, environ={})
    line = e.value.one_line()
    assert "[engine.context_sise]" in line and str(path) in line and "did you mean 'context_size'" in line


@pytest.mark.parametrize("extra, fragment", [
    ("[engine]\nthreads = \"four\"\n", "[engine.threads] must be an integer"),
    ("[engine]\ncontext_size = 10\n", "[engine.context_size] is 10, outside 512"),
    ("[engine]\nflash_attention = 1\n", "[engine.flash_attention] must be true, false or \"auto\""),
    ("[log]\nlevel = \"loud\"\n", "use one of: debug, info, warning, error"),
    ("[wach]\n", "[wach] is not a known section"),
    ('[[props]]\nname = "lantern"\n[[props]]\nname = "Lantern"\n',
     "[props[1].name] 'Lantern' repeats props[0] 'lantern' (names are compared ignoring case)"),
    ('[[characters]]\nname = "Fox|Wolf"\n', "[characters[0].name] 'Fox|Wolf' contains '|'"),
    ('[[props]]\nname = "x"\n[[props]]\nname = "AC/DC amp"\n', "[props[1].name] 'AC/DC amp' contains '/'"),
    ('[[props]]\nname = "two\\nlines"\n', "[props[0].name] 'two\\nlines' contains the control character U+000A"),
    ('[[props]]\nname = " lantern "\n[[props]]\nname = "lantern"\n', "[props[1].name] 'lantern' repeats"),
    ('[[characters]]\ndescription = "no name"\n', "[characters[0].name] must be a non-empty string"),
])
def test_wrong_values_are_refused_with_the_key(tmp_path, extra, fragment):
    with pytest.raises(ConfigError) as e:
        config.load(_cfg(tmp_path, MINIMAL + extra), environ={})
    assert fragment in e.value.one_line()


def test_names_people_type_are_kept_exactly(tmp_path):
    names = ['Mr. "Moon"', "Баба Яга", "O'Brien", "back\\slash", "  padded  "]
    body = "".join(f"[[characters]]\nname = {json.dumps(n)}\n" for n in names)
    s = config.load(_cfg(tmp_path, MINIMAL + body), environ={})
    assert s.catalog.character_names() == ('Mr. "Moon"', "Баба Яга", "O'Brien", "back\\slash", "padded")


def test_llama_backend_requires_model_paths(tmp_path):
    with pytest.raises(ConfigError, match=r"\[model.path\] is required"):
        config.load(_cfg(tmp_path, '[watch]\nfolders = ["in"]\n'), environ={})


def test_environment_overrides_win_and_are_validated(tmp_path):
    path = _cfg(tmp_path, MINIMAL)
    s = config.load(path, environ={"BBSD_ENGINE_THREADS": "3", "BBSD_WATCH_RECURSIVE": "no",
                                   "BBSD_WATCH_FOLDERS": f"{tmp_path}/a:{tmp_path}/b"})
    assert s.backend.threads == 3 and s.watch.recursive is False
    assert s.watch.folders == (tmp_path / "a", tmp_path / "b")
    with pytest.raises(ConfigError, match=r"\$BBSD_ENGINE_THREADS='x' is not a valid int"):
        config.load(path, environ={"BBSD_ENGINE_THREADS": "x"})
    # true, false or "auto", in either spelling of the environment
    for text, value in (("AUTO", "auto"), ("no", False), ("1", True)):
        assert config.load(path, environ={"BBSD_ENGINE_FLASH_ATTENTION": text}).backend.flash_attention == value
    with pytest.raises(ConfigError, match=r"='maybe' is not true, false or \"auto\""):
        config.load(path, environ={"BBSD_ENGINE_FLASH_ATTENTION": "maybe"})


def test_a_reload_names_the_table_a_backend_key_was_edited_in(tmp_path):
    """SIGHUP's restart notice says [model] or [engine], not the name of the backend's settings object."""
    from bbsd.engine import registry

    path = _cfg(tmp_path, MINIMAL)
    old = config.load(path, environ={})
    assert registry.changed_tables(old, config.load(path, environ={"BBSD_ENGINE_THREADS": "3"})) == ["engine"]
    assert registry.changed_tables(old, config.load(path, environ={"BBSD_MODEL_PATH": "x.gguf"})) == ["model"]
    assert registry.changed_tables(old, config.load(path, environ={})) == []


def test_broken_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(_cfg(tmp_path, "[watch\n"), environ={})
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.toml", environ={})


@pytest.mark.parametrize("case", ["misspelt key", "missing model", "missing folder"])
def test_cli_prints_one_line_and_exits_2(tmp_path, tiny_models, case):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    models = tiny_models
    extra = ""
    if case == "misspelt key":
        extra = "[engine]\nthred = 2\n"
    elif case == "missing model":
        models = (tmp_path / "absent.gguf", tiny_models[1])
    else:
        inbox = tmp_path / "not-there"
    cfg = write_config(tmp_path, [inbox], models, extra=extra.replace("[engine]\n", ""))
    if extra:
        cfg.write_text(cfg.read_text().replace("threads = 2", "thred = 2"))
    result = run_bbsd("check", "--config", str(cfg))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bbsd: error:"), result.stderr
    assert "Traceback" not in result.stderr
    expected = {"misspelt key": "[engine.thred] is not a known key", "missing model": "absent.gguf not found",
                "missing folder": "does not exist"}[case]
    assert expected in lines[0]


def test_unwritable_watch_folder_is_refused_in_one_line(tmp_path, tiny_models):
    import subprocess

    inbox = tmp_path / "ro"
    inbox.mkdir()
    if os.geteuid() == 0:  # root ignores permission bits: use a read-only mount instead
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=16k", "tmpfs", str(inbox)], capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot mount a read-only tmpfs: {r.stderr.decode().strip()}")
    else:
        inbox.chmod(0o555)
    try:
        result = run_bbsd("check", "--config", str(write_config(tmp_path, [inbox], tiny_models)))
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(inbox)], check=False)
        else:
            inbox.chmod(0o755)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "watch folder" in lines[0] and ("read-only" in lines[0] or "not writable" in lines[0])
