"""`bbsd dataset export`, end to end through the CLI: what a trainer would read is bbsd's own question
and the true labels as the reply bbsd's grammar admits, and the originals are only read."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import jsonschema
import pytest

from bbsd import config as config_mod
from bbsd.engine import prompt
from bbsd.sidecars import record as sidecar
from tests.conftest import make_photo, run_bbsd, write_config

BY, K, L = "Baba Yaga", "Koschei", "lantern"
QUESTION = '[[questions]]\nkey = "outdoor"\nquestion = "Is it outdoors?"\ntype = "yes_no"\n'
TRUTH = [  # (file, characters, props, caption, answer)
    ("set/a.jpg", [K, BY], [L], "Baba Yaga and Koschei by lantern light", "no"),
    ("set/b.jpg", [], [], None, "yes"),  # no caption/scene in the truth: empty strings
    ("set/sub/a.jpg", [K], [], "Koschei alone", "yes"),  # same file name, another folder
]


def _set_up(tmp_path: Path) -> tuple[Path, Path]:
    for i, (file, *_rest) in enumerate(TRUTH):
        make_photo(tmp_path / file, color=(30 * i, 60, 90))
    (tmp_path / "inbox").mkdir()
    config = write_config(tmp_path, [tmp_path / "inbox"], backend="fake", extra=QUESTION)
    lines = []
    for file, chars, props, caption, ans in TRUTH:
        entry = {"file": file, "characters": chars, "props": props, "answers": {"outdoor": ans}}
        if caption:
            entry |= {"caption": caption, "scene": "stage"}
        lines.append(json.dumps(entry))
    manifest = tmp_path / "truth.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return config, manifest


def _digests(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _export(config: Path, out: Path, fmt: str, *extra: str):
    return run_bbsd("dataset", "export", "--config", str(config), "--out", str(out), "--format", fmt, *extra)


def _samples(out: Path, fmt: str) -> list[tuple[str, str, str, Path]]:
    """(system, user, answer, image) of each sample, read the way the format's trainer reads it."""
    lines = [json.loads(line) for line in (out / "bbsd.jsonl").read_text().splitlines()]
    if fmt == "internvl":
        meta = json.loads((out / "meta.json").read_text())["bbsd"]
        assert meta["length"] == len(lines) and Path(meta["annotation"]) == (out / "bbsd.jsonl").resolve()
        assert meta["data_augment"] is False and meta["repeat_time"] == 1
        got = []
        for d in lines:
            turns = d["conversations"]
            assert [t["from"] for t in turns] == ["system", "human", "gpt"]
            assert turns[1]["value"].startswith("<image>\n")
            got.append((turns[0]["value"], turns[1]["value"].removeprefix("<image>\n"), turns[2]["value"],
                        Path(meta["root"]) / d["image"]))  # InternVL joins root and image
        return got
    info = json.loads((out / "dataset_info.json").read_text())["bbsd"]
    assert info["file_name"] == "bbsd.jsonl" and info["formatting"] == "sharegpt"
    got = []
    for d in lines:
        assert [m["role"] for m in d["messages"]] == ["user", "assistant"] and len(d["images"]) == 1
        user = d["messages"][0]["content"]
        assert user.startswith("<image>")
        got.append((d["system"], user.removeprefix("<image>"), d["messages"][1]["content"],
                    out / d["images"][0]))  # LLaMA-Factory's media_dir defaults to the dataset_dir
    return got


@pytest.mark.parametrize("fmt", ["internvl", "llama-factory"])
def test_each_sample_asks_bbsds_prompt_and_answers_the_truth_as_a_valid_reply(tmp_path, fmt):
    config, manifest = _set_up(tmp_path)
    before = _digests(tmp_path / "set")
    out = tmp_path / "ds"
    done = _export(config, out, fmt, "--truth", str(manifest))
    assert done.returncode == 0, done.stderr
    assert "dataset: 3 samples" in done.stdout and "0 photos missing" in done.stdout
    settings = config_mod.load(config)
    expected = prompt.build(settings.catalog, settings.questions)
    schema = prompt.reply_schema(settings.catalog, settings.questions)
    samples = _samples(out, fmt)
    assert len(samples) == len(TRUTH)
    for (system, user, answer, image), (file, chars, props, caption, ans) in zip(samples, TRUTH, strict=True):
        assert (system, user) == (expected.system, expected.user)
        reply = json.loads(answer)
        jsonschema.validate(reply, schema)
        assert list(reply) == list(schema["properties"])  # the order the grammar writes the keys in
        assert (set(reply["characters"]), set(reply["props"])) == (set(chars), set(props))
        assert (reply["caption"], reply["answers"]) == (caption or "", {"outdoor": ans})
        assert image.read_bytes() == (tmp_path / file).read_bytes()
        assert image.stat().st_ino == (tmp_path / file).stat().st_ino  # same filesystem: a link, no copy
    assert len({s[3] for s in samples}) == 3  # two photos named a.jpg stay two images
    assert _digests(tmp_path / "set") == before


def test_a_photo_gone_since_the_manifest_was_written_is_skipped_and_counted(tmp_path):
    config, manifest = _set_up(tmp_path)
    (tmp_path / "set" / "b.jpg").unlink()
    done = _export(config, tmp_path / "ds", "llama-factory", "--truth", str(manifest))
    assert done.returncode == 0, done.stderr
    assert "dataset: 2 samples" in done.stdout and "1 photos missing" in done.stdout
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert any(e["event"] == "dataset.photo_missing" and e["path"].endswith("b.jpg") for e in events)
    assert len((tmp_path / "ds" / "bbsd.jsonl").read_text().splitlines()) == 2


def test_without_a_manifest_the_reviewed_sidecars_are_the_truth(tmp_path):
    inbox = tmp_path / "inbox"
    photos = [make_photo(inbox / f"{n}.jpg") for n in ("corrected", "untouched")]
    config = write_config(tmp_path, [inbox], backend="fake")
    assert run_bbsd("label", "--config", str(config), str(inbox)).returncode == 0
    corrected = json.loads(sidecar.path_for(photos[0]).read_text())
    corrected["labels"]["characters"], corrected["labels"]["props"] = [K], []
    sidecar.path_for(photos[0]).write_text(json.dumps(corrected))
    done = _export(config, tmp_path / "ds", "internvl")
    assert done.returncode == 0, done.stderr
    [(_system, _user, answer, image)] = _samples(tmp_path / "ds", "internvl")
    assert (json.loads(answer)["characters"], json.loads(answer)["props"]) == ([K], [])
    assert image.read_bytes() == photos[0].read_bytes()


def test_a_bad_manifest_is_one_line_and_exit_2_with_nothing_written(tmp_path):
    config, manifest = _set_up(tmp_path)
    manifest.write_text(manifest.read_text() + '{"file": "set/a.jpg", "characters": ["Kashchey"], "props": []}\n')
    done = _export(config, tmp_path / "ds", "internvl", "--truth", str(manifest))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and f"{manifest}:4: 'characters' names 'Kashchey'" in done.stderr
    assert not (tmp_path / "ds").exists()


def test_a_folder_already_holding_files_is_refused(tmp_path):
    config, manifest = _set_up(tmp_path)
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "keep.txt").write_text("mine")
    done = _export(config, tmp_path / "ds", "internvl", "--truth", str(manifest))
    assert done.returncode == 2 and "not an empty folder" in done.stderr
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["keep.txt"]


def test_a_truth_without_an_answer_to_a_configured_question_is_skipped_not_guessed(tmp_path):
    config, manifest = _set_up(tmp_path)
    lines = manifest.read_text().splitlines()
    lines[1] = lines[1].replace(', "answers": {"outdoor": "yes"}', "")
    manifest.write_text("\n".join(lines) + "\n")
    done = _export(config, tmp_path / "ds", "internvl", "--truth", str(manifest))
    assert done.returncode == 0, done.stderr
    assert "dataset: 2 samples" in done.stdout and "1 skipped as incomplete" in done.stdout
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert {(e["event"], e["reason"]) for e in events if e["event"] == "dataset.skipped"} == {
        ("dataset.skipped", "no answer to question 'outdoor'")}


def test_an_unknown_format_is_one_line_and_exit_2(tmp_path):
    config, manifest = _set_up(tmp_path)
    done = _export(config, tmp_path / "ds", "llava", "--truth", str(manifest))
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "internvl, llama-factory" in done.stderr
    assert not (tmp_path / "ds").exists()


def test_a_reviewed_name_no_longer_in_the_catalog_skips_the_photo_instead_of_dropping_the_name(tmp_path):
    inbox = tmp_path / "inbox"
    photo = make_photo(inbox / "old.jpg")
    config = write_config(tmp_path, [inbox], backend="fake")
    assert run_bbsd("label", "--config", str(config), str(inbox)).returncode == 0
    doc = json.loads(sidecar.path_for(photo).read_text())
    doc["labels"]["characters"] = [BY, "Kashchey"]  # a name from an older catalog
    sidecar.path_for(photo).write_text(json.dumps({**doc, "reviewed": True}))
    done = _export(config, tmp_path / "ds", "llama-factory")
    assert done.returncode == 0, done.stderr
    assert "dataset: 0 samples" in done.stdout and "1 skipped as incomplete" in done.stdout
    assert "'Kashchey' is not in the catalog" in done.stderr


def test_no_reviewed_photo_is_one_line_and_exit_2(tmp_path):
    inbox = tmp_path / "inbox"
    make_photo(inbox / "untouched.jpg")
    config = write_config(tmp_path, [inbox], backend="fake")
    assert run_bbsd("label", "--config", str(config), str(inbox)).returncode == 0
    done = _export(config, tmp_path / "ds", "internvl")
    assert done.returncode == 2 and "no reviewed photos" in done.stderr and not (tmp_path / "ds").exists()


def test_across_filesystems_the_photos_are_copied(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's folder")
    config, manifest = _set_up(tmp_path)
    out = Path(tempfile.mkdtemp(dir=shm)) / "ds"
    try:
        done = _export(config, out, "internvl", "--truth", str(manifest))
        assert done.returncode == 0, done.stderr
        images = [s[3] for s in _samples(out, "internvl")]
        assert [p.read_bytes() for p in images] == [(tmp_path / t[0]).read_bytes() for t in TRUTH]
    finally:
        shutil.rmtree(out.parent)
