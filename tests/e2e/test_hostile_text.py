"""Hostile text (#33): a model's words, a catalog's names and a file's name reach the XMP, the
console and `bbsd status` only in a form they can hold — never a character XML 1.0 cannot
hold, never a raw terminal escape sequence."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import unicodedata
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bbsd import console
from bbsd.engine import labels
from bbsd.show import catalog, questions
from bbsd.sidecars import record as sidecar
from bbsd.text import printable
from tests.conftest import REPO, bbsd_cmd, make_photo, run_bbsd, wait_until, write_config
from tests.fakes import FAULTS

NFC_ECLAIR = unicodedata.normalize("NFC", "éclair")
NFD_ECLAIR = unicodedata.normalize("NFD", "éclair")
# One of each class a model has been seen to write or a grammar lets through.
BAD = {
    "U+FFFE": "\ufffe", "U+FFFF": "\uffff", "U+FDD0": "\ufdd0", "U+FDEF": "\ufdef",
    "U+1FFFE": "\U0001fffe", "U+10FFFF": "\U0010ffff", "high surrogate": "\ud800", "low surrogate": "\udcff",
    "NUL": "\x00", "ESC": "\x1b", "VT": "\x0b", "DEL": "\x7f", "C1 CSI": "\x9b",
}


def _fail(key: str, problem: str, hint: str) -> Exception:
    return ValueError(f"[{key}] {problem} — {hint}")


CATALOG = catalog.parse({"characters": [{"name": "Baba Yaga"}], "props": [{"name": NFD_ECLAIR}]}, _fail)
ASK = questions.parse([{"key": "mood", "question": "Mood?", "type": "text"},
                       {"key": "dish", "question": "Which dish?", "type": "choice",
                        "choices": [NFD_ECLAIR, "tarte"]}], _fail)


def _reply(bad: str, ensure_ascii: bool, **over) -> str:
    doc = {"characters": [f"Baba{bad} Yaga"], "props": [f"{bad}{NFC_ECLAIR}"], "caption": f"a{bad}b",
           "scene": f"stage{bad}", "visible_text": [f"EXIT{bad}", bad], "answers": {"mood": f"calm{bad}",
                                                                                    "dish": NFC_ECLAIR}}
    return json.dumps({**doc, **over}, ensure_ascii=ensure_ascii)


def _xml_roundtrip(value: str) -> str:
    """What an XML 1.0 parser reads back from an element holding `value` (it refuses what XML cannot hold)."""
    elem = ET.Element("x")
    elem.text = value
    return ET.fromstring(ET.tostring(elem, encoding="unicode")).text or ""


# Each character as a JSON escape and written as it is (a lone surrogate only comes as an escape:
# no UTF-8 byte sequence carries one).
REPLIES = [pytest.param(bad, escaped, id=f"{name}-{'escaped' if escaped else 'raw'}")
           for name, bad in BAD.items() for escaped in (True, False) if escaped or "surrogate" not in name]


@pytest.mark.parametrize(("bad", "ensure_ascii"), REPLIES)
def test_text_xml_cannot_hold_never_survives_parse_reply(bad, ensure_ascii):
    got = labels.parse_reply(_reply(bad, ensure_ascii), CATALOG, ASK)
    texts = [got.caption, got.scene, *got.visible_text, *got.characters, *got.props,
             *(a for _, a in got.answers if isinstance(a, str))]
    assert not any(bad in t for t in texts), got
    assert (got.caption, got.scene, got.visible_text) == ("ab", "stage", ("EXIT",))
    assert got.characters == ("Baba Yaga",) and got.props == (NFC_ECLAIR,)
    assert dict(got.answers) == {"mood": "calm", "dish": NFC_ECLAIR}
    for t in texts:
        assert _xml_roundtrip(t) == t  # an XMP holding it stays well-formed


def test_a_name_written_in_nfd_is_the_catalogs_name():
    assert CATALOG.prop_names() == (NFC_ECLAIR,)  # the catalog keeps NFC, whatever the config was typed in
    got = labels.parse_reply(_reply("", True, props=[NFD_ECLAIR], answers={"mood": "ok", "dish": NFD_ECLAIR}),
                             CATALOG, ASK)
    assert got.props == (NFC_ECLAIR,) and dict(got.answers)["dish"] == NFC_ECLAIR
    assert ASK[1].choices == (NFC_ECLAIR, "tarte")


def test_a_name_that_is_not_a_string_is_an_invalid_reply():
    with pytest.raises(labels.InvalidReplyError, match="'props' is missing or not a list of strings"):
        labels.parse_reply(_reply("", True, props=[7]), CATALOG, ASK)


@pytest.mark.parametrize(("section", "entry"), [
    ("characters", {"name": "Baba\ud800"}),
    ("props", {"name": "lantern", "description": "brass \udfff"}),
])
def test_a_catalog_entry_with_a_lone_surrogate_is_refused(section, entry):
    """TOML cannot write one; a catalog built another way must not slip one through either."""
    with pytest.raises(ValueError, match="lone surrogate"):
        catalog.parse({section: [entry]}, _fail)


def _toml(value: str) -> str:
    """A TOML basic string holding `value`, anything but printable ASCII written as a \\U escape."""
    return '"' + "".join(ch if " " <= ch <= "~" and ch not in '"\\' else f"\\U{ord(ch):08X}" for ch in value) + '"'


def _check(tmp_path: Path, tiny_models, extra: str) -> subprocess.CompletedProcess:
    cfg = write_config(tmp_path, [tmp_path], tiny_models, extra=extra)
    return run_bbsd("check", "--config", str(cfg), timeout=60)


def _one_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.slow
def test_bbsd_check_refuses_one_name_written_twice_in_nfc_and_nfd(tmp_path, tiny_models):
    extra = f'[[props]]\nname = {_toml(NFC_ECLAIR)}\n[[props]]\nname = {_toml(NFD_ECLAIR)}\n'
    line = _one_line(_check(tmp_path, tiny_models, extra))
    # Written before the test config's own catalog (lantern): these are props[0] and props[1].
    assert "props[1].name" in line and "repeats props[0]" in line, line
    assert ascii(NFC_ECLAIR) in line and ascii(NFD_ECLAIR) in line and "NFC" in line, line


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "where", "what"), [
    (f'[[props]]\nname = {_toml("cake" + chr(0xFFFF))}\n', "props[0].name", "U+FFFF (a Unicode non-character)"),
    (f'[[props]]\nname = {_toml("cake" + chr(0x1B))}\n', "props[0].name", "control character U+001B"),
    (f'[[props]]\nname = "cake"\ndescription = {_toml("sweet" + chr(0xFDD0))}\n', "props[0].description",
     "U+FDD0 (a Unicode non-character)"),
    (f'[[questions]]\nkey = "lit"\nquestion = "Lit?"\ntype = "yes_no"\nlabel = {_toml("Lit" + chr(0xFFFE))}\n',
     "questions[0].label", "U+FFFE (a Unicode non-character)"),
    (f'[[questions]]\nkey = "dish"\nquestion = "Dish?"\ntype = "choice"\nchoices = ["tarte", '
     f'{_toml("cake" + chr(0x10FFFF))}]\n', "questions[0].choices[1]", "U+10FFFF (a Unicode non-character)"),
    (f'[[questions]]\nkey = "lit"\nquestion = {_toml("Lit?" + chr(0x1FFFF))}\ntype = "yes_no"\n',
     "questions[0].question", "U+1FFFF (a Unicode non-character)"),
    (f'[[characters]]\nname = {_toml("Fox" + chr(0x202E) + "gpj")}\n', "characters[0].name",
     "bidirectional control U+202E"),
], ids=["name U+FFFF", "name ESC", "description", "question label", "choice", "question text", "name RLO"])
def test_bbsd_check_refuses_catalog_text_an_xmp_cannot_hold(tmp_path, tiny_models, extra, where, what):
    line = _one_line(_check(tmp_path, tiny_models, extra))
    assert line.startswith("bbsd: error:") and where in line and what in line, line
    assert "\x1b" not in line  # the refused character itself is shown escaped


def test_status_and_label_lines_show_control_characters_escaped():
    """A server's error body and a file name, as `bbsd status` and `bbsd label` print them."""
    status = {"started_at": "2026-12-07T00:00:00+00:00", "pid": 1, "model": "m\x1b[2J.gguf", "queue_depth": 0,
              "in_flight": "/in/\x1b[31mred.jpg", "labeled": 0, "failed": 0, "p50_ms": None, "p95_ms": None,
              "last_ms": None, "rss_mb": None, "vram_mb": None, "updated_at": "",
              "endpoints": [{"url": "http://h", "model": "m", "state": "down",
                             "last_error": "HTTP 500: \x1b]0;owned\x07\u202egpj.exe\udcff"}]}
    shown = console.status_text(status, running=True)
    assert not any(ch in shown for ch in "\x1b\x07\u202e\udcff"), shown
    assert "\\x1b[31mred.jpg" in shown and "\\x1b]0;owned\\x07\\u202egpj.exe\\udcff" in shown


def test_the_status_file_holds_an_undecodable_name_and_any_endpoint_value(tmp_path):
    """A photo whose name is not UTF-8 in hand, an endpoint value JSON has no type for: the status
    file is still written, and `bbsd status` shows the name escaped."""
    from bbsd.service import state

    status = state.Status(tmp_path, "m.gguf")
    status.endpoints = [{"url": "http://h", "state": "down", "last_error": ConnectionResetError(104, "reset")}]
    status.write("running", 1, "/in/\udcff\x1b[31mred.jpg", force=True)
    doc = state.read(tmp_path)
    assert doc["in_flight"] == "/in/\udcff\x1b[31mred.jpg" and "reset" in doc["endpoints"][0]["last_error"]
    shown = console.status_text(doc, running=True)
    assert "in flight: /in/\\udcff\\x1b[31mred.jpg" in shown and "\x1b" not in shown


def test_printable_escapes_every_control_and_keeps_the_rest():
    assert printable("\x1b[31mred\té😀\x9b\u2028.jpg") == "\\x1b[31mred\\té😀\\x9b\\u2028.jpg"
    assert printable("line\nbreak\x1b", keep="\n") == "line\nbreak\\x1b"


LOG_SCRIPT = """
import sys
from bbsd import logs
import structlog
class Unshowable:
    def __repr__(self):
        raise RuntimeError("no")
logs.configure("info", sys.argv[1])
log = structlog.get_logger()
log.info("photo.labeled", path="/in/\\udcff\\x1b[31mred.jpg", reply="\\ud800\\x07")
log.info("photo.odd", value=Unshowable())
print("still running", file=sys.stderr)
"""


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_log_line_with_surrogates_or_an_unshowable_value_never_raises(fmt):
    """An undecodable file name (surrogate-escaped by Python) or a value whose repr fails: the line
    is written and the process goes on (a raising log call would cost the photo or the worker)."""
    done = subprocess.run([sys.executable, "-c", LOG_SCRIPT, fmt], capture_output=True, cwd=REPO, timeout=60,
                          env={**os.environ, "PYTHONIOENCODING": "ascii:strict"})
    err = done.stderr.decode("utf-8")
    assert done.returncode == 0 and "still running" in err, err
    assert b"\x1b" not in done.stderr and b"\x07" not in done.stderr, err
    if fmt == "json":
        lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert lines[0]["path"] == "/in/\udcff\x1b[31mred.jpg" and lines[0]["reply"] == "\ud800\x07"
        assert lines[1]["event"] == "photo.odd" and "cannot be shown" in lines[1]["value"]
    else:
        assert "path=/in/\\udcff\\x1b[31mred.jpg" in err and "photo.odd" in err and "cannot be shown" in err, err


def _read_until(fd: int, out: bytearray, done, timeout: float, what: str) -> None:
    import contextlib
    import select

    def step() -> bool:
        if select.select([fd], [], [], 0.1)[0]:
            with contextlib.suppress(OSError):  # EIO once the child is gone
                out.extend(os.read(fd, 65536))
        return done()

    wait_until(step, timeout, what)


def _start_on_a_pty(cfg: Path, env: dict[str, str]) -> tuple[int, int]:
    """`bbsd run` by hand: stdout and stderr on a pseudo-terminal, so logs render for people."""
    import pty

    cfg.write_text(cfg.read_text().replace('format = "json"', 'format = "auto"'))
    env = {**{k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}, "COLUMNS": "200", **env}
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.execve(bbsd_cmd()[0], bbsd_cmd("run", "--config", str(cfg)), env)
    return pid, fd


def _stop(pid: int, fd: int, out: bytearray) -> None:
    os.kill(pid, signal.SIGTERM)
    try:
        _read_until(fd, out, lambda: os.waitpid(pid, os.WNOHANG)[0] == pid, 60, "bbsd run to stop")
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise


@pytest.mark.slow
def test_model_output_reaches_the_xmp_clean_and_the_console_escaped(tmp_path):
    """A running daemon whose model writes U+FFFF and escape sequences: the editor's darktable XMP
    stays well-formed, the JSON holds the cleaned text, and the console shows the raw reply escaped."""
    from tests.sidecars.test_xmp import GOLDEN

    inbox = tmp_path / "in"
    inbox.mkdir()
    replies = {
        "stage.jpg": {"characters": ["Baba Yaga"], "props": [NFD_ECLAIR],
                      "caption": "Baba\x1b[2J Yaga\uffff bows\ud800", "scene": "hut\ufdd0",
                      "visible_text": ["EXIT\U0010ffff"]},
        # as the model wrote it: raw control characters inside a JSON string (llama.cpp's grammar admits them)
        "bad.jpg": '{"characters": ["\x1b]0;owned\x07evil"], "props": [], "caption": "", "scene": "", '
                   '"visible_text": []}',
    }
    (tmp_path / "replies.json").write_text(json.dumps(replies))
    cfg = write_config(tmp_path, [inbox], backend="fake", extra=f'[fake]\nreplies = "{tmp_path / "replies.json"}"\n'
                       f'[[props]]\nname = {_toml(NFC_ECLAIR)}\n')
    pid, fd = _start_on_a_pty(cfg, {})
    out = bytearray()
    try:
        _read_until(fd, out, lambda: b"daemon.ready" in out, 60, "daemon.ready")  # no start-up backlog bar
        stage = make_photo(tmp_path / "stage.jpg")
        shutil.copyfile(GOLDEN / "darktable.xmp", inbox / "stage.jpg.xmp")
        stage.rename(inbox / "stage.jpg")
        bad = make_photo(inbox / "bad.jpg", color=(9, 9, 9))
        _read_until(fd, out, lambda: out.count(b"photo.labeled") + out.count(b"photo.failed") >= 2, 60, "both")
    finally:
        _stop(pid, fd, out)
    text = out.decode("utf-8", errors="replace")
    assert b"\x1b" not in out and b"\x07" not in out, text[-3000:]
    assert "\\x1b]0;owned\\x07evil" in text and "reply.invalid" in text, text[-3000:]
    labels = json.loads(sidecar.path_for(inbox / "stage.jpg").read_text())["labels"]
    assert labels["caption"] == "Baba[2J Yaga bows" and labels["scene"] == "hut", labels
    assert labels["visible_text"] == ["EXIT"] and labels["props"] == [NFC_ECLAIR], labels
    xmp_text = (inbox / "stage.jpg.xmp").read_text(encoding="utf-8")
    ET.fromstring(xmp_text)  # well-formed: darktable and exiv2 can still read it
    assert not any(ch in xmp_text for ch in "\uffff\ufdd0\U0010ffff\x1b"), xmp_text
    assert "hut" in xmp_text and "darktable:history" in xmp_text
    assert json.loads(sidecar.path_for(bad).read_text())["error"]["code"] == "invalid_reply"


@pytest.mark.slow
def test_escape_sequences_in_file_names_reach_the_console_and_status_escaped(tmp_path, tiny_models):
    """`bbsd run` by hand on a terminal: the photo named `$'\\e[31mred.jpg'` is labelled, and its
    name shows as text in the console log and in `bbsd status` (while another one is in hand)."""
    inbox = tmp_path / "in"
    red = make_photo(inbox / "\x1b[31mred.jpg")  # alone in the backlog: no progress bar redraws
    cfg = write_config(tmp_path, [inbox], tiny_models)
    pid, fd = _start_on_a_pty(cfg, {**FAULTS, "BBSD_TEST_HANG_ON": "hang"})
    out = bytearray()
    try:
        _read_until(fd, out, lambda: sidecar.path_for(red).exists() and b"photo.labeled" in out, 120, "red.jpg")
        hang = make_photo(inbox / "\x1b[2J\x1b]0;owned\x07hang.jpg", color=(9, 9, 9))
        shown: list[str] = []

        def status_names_it() -> bool:
            done = run_bbsd("status", "--config", str(cfg), timeout=30)
            shown[:] = [done.stdout]
            return "hang.jpg" in done.stdout

        _read_until(fd, out, status_names_it, 60, "bbsd status to show the photo in hand")
        assert "\x1b" not in shown[0] and "\x07" not in shown[0], shown[0]
        assert printable(hang.name) in shown[0], shown[0]
    finally:
        _stop(pid, fd, out)
    text = out.decode("utf-8", errors="replace")
    assert b"\x1b" not in out and b"\x07" not in out, text[-3000:]
    assert "\\x1b[31mred.jpg" in text and "photo.labeled" in text, text[-3000:]
