"""The show's own questions: validated once, asked under the grammar, stored in JSON and XMP, relabel on change."""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import subprocess
import threading

import pytest
from PIL import Image, ImageDraw

from bbsd import config, console
from bbsd.engine import labels, prompt
from bbsd.engine.jump import Cursor
from bbsd.engine.registry import open_in_process as open_labeler  # the engine itself, not its worker
from bbsd.errors import ConfigError
from bbsd.pipeline import Outcome, Pipeline, Status
from bbsd.service.daemon import Daemon
from bbsd.sidecars import record as sidecar
from bbsd.sidecars import xmp
from tests.conftest import make_photo, wait_until, write_config
from tests.engine.test_grammar import grammar_accepts, vocab_model  # noqa: F401 - vocab_model is a fixture
from tests.fakes.engine import FakeLabeler
from tests.sidecars.test_xmp import exiftool, needs_exiftool

QUESTIONS = """
[[questions]]
key = "act"
question = "Which act of the show is this?"
type = "choice"
choices = ["Act 1", "Act 2", "Act 3"]

[[questions]]
key = "puppeteer_visible"
question = "Is a puppeteer visible?"
type = "yes_no"

[[questions]]
key = "puppet_count"
question = "How many puppets are on stage?"
type = "integer"
min = 0
max = 12

[[questions]]
key = "mood"
question = "What is the mood, in a few words?"
type = "text"
max_length = 30
"""
ANSWERS = {"act": "Act 2", "puppeteer_visible": "yes", "puppet_count": 3, "mood": "tense, lantern-lit"}


def load(tmp_path, questions: str = QUESTIONS, extra: str = ""):
    return config.load(write_config(tmp_path, [tmp_path], backend="fake", extra=extra + questions), environ={})


def reply(answers: dict | None = None) -> str:
    """A reply as a model writes it under the grammar (no optional spaces)."""
    doc = {"characters": ["Baba Yaga"], "props": [], "caption": "c", "scene": "s", "visible_text": [],
           "answers": ANSWERS if answers is None else answers}
    return json.dumps(doc, separators=(",", ":"))


def refusal(tmp_path, questions: str) -> str:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, questions)
    line = e.value.one_line()
    assert "\n" not in line and str(tmp_path / "config.toml") in line
    return line


# --- configuration -------------------------------------------------------------------------------


def test_questions_load_typed_with_labels_and_bounds(tmp_path):
    q = load(tmp_path).questions
    assert [x.key for x in q] == ["act", "puppeteer_visible", "puppet_count", "mood"]
    assert q[0].choices == ("Act 1", "Act 2", "Act 3") and q[1].label == "Puppeteer visible"
    assert (q[2].low, q[2].high, q[3].max_length) == (0, 12, 30)
    assert load(tmp_path, "").questions == ()


@pytest.mark.parametrize("entry, named, says", [
    ('key = "act"\nquestion = "Which act?"\ntype = "choice"\nchoices = []', "questions[0].choices", "2 to 20"),
    ('key = "act"\nquestion = "Which act?"\ntype = "choice"\nchoices = ["1|2", "3"]', "questions[0].choices[0]",
     "contains '|'"),
    ('key = "act"\nquestion = "Which act?"\ntype = "choice"\nchoices = ["Act 1", "act 1"]',
     "questions[0].choices[1]", "listed twice"),
    ('key = "act"\nquestion = "Which act?"\ntype = "yes_no"\nlabel = "Act/Scene"', "questions[0].label",
     "contains '/'"),
    ('key = "Act|2"\nquestion = "Which act?"\ntype = "yes_no"', "questions[0].key", "not a stable key"),
    ('key = "act"\nquestion = "Which act?"\ntype = "choice"\nchoises = ["a", "b"]', "questions[0].choises",
     "known: key, question, type, label, choices"),
    ('key = "act"\nquestion = "Which act?"\ntype = "yes_no"\nmax = 3', "questions[0].max", "not a key of a yes_no"),
    ('key = "n"\nquestion = "How many?"\ntype = "integer"\nmin = 0\nmax = 500', "questions[0].max", "from 1 to 100"),
    ('key = "n"\nquestion = "How many?"\ntype = "integer"\nmax = 5', "questions[0].min", "is required"),
    ('key = "t"\nquestion = "Mood?"\ntype = "text"\nmax_length = 0', "questions[0].max_length", "1 to 200"),
    ('key = "t"\nquestion = "Mood?"\ntype = "essay"', "questions[0].type", "yes_no, choice, integer, text"),
    ('key = "t"\ntype = "text"', "questions[0].question", "is required"),
    ('key = "props"\nquestion = "Props?"\ntype = "yes_no"', "questions[0].label", "catalog's keyword branch"),
])
def test_a_bad_question_is_one_line_naming_the_entry_and_the_file(tmp_path, entry, named, says):
    line = refusal(tmp_path, f"[[questions]]\n{entry}\n")
    assert f"[{named}]" in line and says in line


def test_duplicate_keys_and_labels_are_refused(tmp_path):
    yes_no = '[[questions]]\nkey = "{}"\nquestion = "Lit?"\ntype = "yes_no"\n'
    assert "[questions[1].key] repeats questions[0].key 'lit'" in refusal(tmp_path, yes_no.format("lit") * 2)
    twice = yes_no.format("lit") + yes_no.format("lit_") + 'label = "LIT"\n'
    assert "[questions[1].label] repeats questions[0].label 'lit'" in refusal(tmp_path, twice)


def test_answers_branch_is_a_keyword_path(tmp_path):
    assert load(tmp_path, extra='[xmp]\nquestions_branch = "BBS|Questions"\n').xmp.answers_branch() == "BBS|Questions"
    assert load(tmp_path).xmp.answers_branch() == "BBS"
    with pytest.raises(ConfigError, match=r"\[xmp.questions_branch\] .* contains '/'"):
        load(tmp_path, extra='[xmp]\nquestions_branch = "BBS/Questions"\n')


# --- schema, grammar, validation -----------------------------------------------------------------


def test_grammar_admits_only_each_questions_declared_answers(tmp_path, vocab_model):  # noqa: F811
    s = load(tmp_path)
    p = prompt.build(s.catalog, s.questions)
    assert grammar_accepts(vocab_model, p.grammar, reply())
    for bad in ({"puppeteer_visible": "maybe"}, {"act": "Act 4"}, {"puppet_count": 13}, {"puppet_count": "3"},
                {"mood": "x" * 31}):
        assert not grammar_accepts(vocab_model, p.grammar, reply({**ANSWERS, **bad})), bad
    assert not grammar_accepts(vocab_model, p.grammar, reply({k: v for k, v in ANSWERS.items() if k != "mood"}))


def test_without_questions_the_prompt_is_exactly_the_old_one(tmp_path):
    s = load(tmp_path, "")
    p = prompt.build(s.catalog, s.questions)
    assert "answers" not in p.schema["properties"] and "answers" not in p.grammar and "answer" not in p.system
    assert p.questions_digest == "" and "questions_sha256" not in sidecar.identity(FakeLabeler().info, p)["prompt"]


def test_answers_are_validated_again_after_parsing(tmp_path):
    s = load(tmp_path)
    parsed = labels.parse_reply(reply({**ANSWERS, "mood": "  calm\x07  "}), s.catalog, s.questions)
    assert dict(parsed.answers) == {**ANSWERS, "mood": "calm"}
    for bad, says in [({"puppeteer_visible": True}, "'puppeteer_visible' is True, not yes or no"),
                      ({"act": "Act 4"}, "not one of its listed answers"),
                      ({"puppet_count": 13}, "not a whole number from 0 to 12"),
                      ({"extra": "x"}, "'extra', which is not a configured question")]:
        with pytest.raises(labels.InvalidReplyError, match=says):
            labels.parse_reply(reply({**ANSWERS, **bad}), s.catalog, s.questions)


def test_a_reply_without_answers_is_invalid_when_questions_are_asked(tmp_path):
    s = load(tmp_path)
    without = json.dumps({k: v for k, v in json.loads(reply()).items() if k != "answers"})
    with pytest.raises(labels.InvalidReplyError, match="'answers' is missing"):
        labels.parse_reply(without, s.catalog, s.questions)


def test_jump_forward_writes_answer_keys_and_completes_unambiguous_answers(tmp_path):
    s = load(tmp_path)
    cursor = Cursor(prompt.build(s.catalog, s.questions).schema)
    head = reply()[: reply().index('"answers"')]
    assert cursor.forced(head).text == '"answers":{"act":"'  # three acts: the model chooses
    assert cursor.forced(head + '"answers":{"act":"Act 2').text == '","puppeteer_visible":"'
    after_act = head + '"answers":{"act":"Act 2","puppeteer_visible":"y'
    assert cursor.forced(after_act).text == 'es","puppet_count":'
    assert cursor.forced(after_act + 'es","puppet_count":1').text == ""  # 1, 10, 11 or 12: the model chooses
    assert cursor.forced(after_act + 'es","puppet_count":5').text == ',"mood":"'
    done = cursor.forced(after_act + 'es","puppet_count":5,"mood":"calm"')
    assert done.text == "}}" and done.complete


# --- the two sidecars, through the pipeline (fake labeller) ---------------------------------------


@pytest.fixture
def labelled(tmp_path):
    """Label one photo with scripted answers of every type; return the photo and its XMP."""
    s = load(tmp_path)
    photo = make_photo(tmp_path / "IMG_0001.JPG")
    pipeline = Pipeline(FakeLabeler([reply()]), s, prompt.build(s.catalog, s.questions))
    assert pipeline.process(photo).status is Status.LABELED
    return photo, tmp_path / "IMG_0001.JPG.xmp"


def test_json_sidecar_records_every_answer_under_its_key(labelled, validate_sidecar):
    doc = validate_sidecar(labelled[0])
    assert doc["labels"]["answers"] == ANSWERS
    assert len(doc["prompt"]["questions_sha256"]) == 64


def test_bbsd_label_prints_the_answers(tmp_path, labelled):
    line = console.outcome_line(Outcome(labelled[0], Status.LABELED))
    assert "  act=Act 2  puppeteer_visible=yes  puppet_count=3  mood=tense, lantern-lit  (" in line


@needs_exiftool
def test_xmp_carries_closed_answers_as_keywords_and_every_answer_as_a_bbsd_property(labelled):
    tags = exiftool(labelled[1])
    assert tags["XMP-lr:HierarchicalSubject"] == ["BBS|Characters|Baba Yaga", "BBS|Act|Act 2",
                                                  "BBS|Puppeteer visible|yes"]
    assert tags["XMP-digiKam:TagsList"] == ["BBS/Characters/Baba Yaga", "BBS/Act/Act 2", "BBS/Puppeteer visible/yes"]
    assert tags["XMP-dc:Subject"] == ["Baba Yaga", "Act 2", "yes"]  # leaves, as Lightroom writes them
    assert tags["XMP-bbsd:Answer_puppet_count"] == 3 and tags["XMP-bbsd:Answer_mood"] == "tense, lantern-lit"
    assert tags["XMP-bbsd:Answer_act"] == "Act 2" and tags["XMP-bbsd:Answer_puppeteer_visible"] == "yes"


@pytest.mark.skipif(shutil.which("exiv2") is None, reason="exiv2 missing: `make tools` installs it")
def test_exiv2_reads_the_answer_keywords(labelled):
    out = subprocess.run(["exiv2", "-px", str(labelled[1])], capture_output=True, text=True, check=True).stdout
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert rows["Xmp.lr.hierarchicalSubject"].endswith("BBS|Characters|Baba Yaga, BBS|Act|Act 2, "
                                                       "BBS|Puppeteer visible|yes")
    assert rows["Xmp.digiKam.TagsList"].endswith("BBS/Characters/Baba Yaga, BBS/Act/Act 2, BBS/Puppeteer visible/yes")
    assert rows["Xmp.bbsd.answer_puppet_count"].endswith(" 3")


@needs_exiftool
def test_a_persons_answer_keyword_edit_survives_relabelling(tmp_path, labelled):
    photo, target = labelled
    doc = xmp.Document.parse(target.read_bytes())  # an editor corrects the act in their photo tool
    edited = tuple(k.replace("Act 2", "Act 3") for k in doc.items("lr:hierarchicalSubject"))
    doc.set_items("lr:hierarchicalSubject", "rdf:Bag", edited)
    target.write_bytes(doc.to_bytes())
    photo.write_bytes(photo.read_bytes() + b"\0")  # the photo changed: relabel, the model says Act 2 again
    s = load(tmp_path)
    Pipeline(FakeLabeler([reply()]), s, prompt.build(s.catalog, s.questions)).process(photo)
    tags = exiftool(target)
    assert "BBS|Act|Act 3" in tags["XMP-lr:HierarchicalSubject"]
    assert "BBS|Act|Act 2" not in tags["XMP-lr:HierarchicalSubject"]  # removed by a person: never re-added


def test_answers_go_under_the_configured_branch(tmp_path):
    s = load(tmp_path, extra='[xmp]\nquestions_branch = "BBS|Questions"\n')
    parsed = labels.parse_reply(reply(), s.catalog, s.questions)
    p = xmp.proposal_for(parsed, s.xmp.root, {}, s.questions, s.xmp.answers_branch())
    assert p.hierarchical[1:] == ("BBS|Questions|Act|Act 2", "BBS|Questions|Puppeteer visible|yes")
    assert p.tags[1:] == ("BBS/Questions/Act/Act 2", "BBS/Questions/Puppeteer visible/yes")


# --- prompt identity: a changed question relabels, an unchanged one does not ----------------------


def test_changing_a_questions_text_relabels_and_changing_nothing_does_not(tmp_path):
    photo = make_photo(tmp_path / "IMG_0001.JPG")

    def run(questions: str) -> Status:
        s = load(tmp_path, questions)
        return Pipeline(FakeLabeler(), s, prompt.build(s.catalog, s.questions)).process(photo).status

    assert run(QUESTIONS) is Status.LABELED
    assert run(QUESTIONS) is Status.SKIPPED  # same config, read again: nothing to do
    assert run(QUESTIONS.replace("Is a puppeteer visible?", "Can you see a puppeteer?")) is Status.LABELED
    assert run(QUESTIONS.replace("max = 12", "max = 10")) is Status.LABELED  # the reply's type changed too
    assert run("") is Status.LABELED  # questions removed: the answers in the sidecar are stale
    assert run("") is Status.SKIPPED


def test_sighup_applies_new_questions_and_the_running_daemon_relabels(tmp_path):
    inbox = tmp_path / "in"
    photo = make_photo(inbox / "IMG_0001.JPG")
    path = write_config(tmp_path, [inbox], backend="fake", extra="[worker]\nisolate = false\n" + QUESTIONS)
    s = config.load(path, environ={})
    pipeline = Pipeline(FakeLabeler(), s, prompt.build(s.catalog, s.questions))
    daemon = Daemon(s, pipeline)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: sidecar.path_for(photo).exists(), 60, "the first sidecar")
        first = sidecar.read(photo)["prompt"]["questions_sha256"]
        path.write_text(path.read_text().replace('"Act 3"]', '"Act 3", "Finale"]'))
        daemon.reload.set()  # what the SIGHUP handler does
        wait_until(lambda: sidecar.read(photo)["prompt"]["questions_sha256"] != first, 60, "the relabel")
    finally:
        daemon.stop.set()
        thread.join(30)
        pipeline.close()
    assert "Finale" in pipeline.prompt.system and "Finale" in pipeline.prompt.grammar


# --- the tiny real model: the grammar holds over 50 photos; what each question costs ---------------


def _photo(i: int) -> Image.Image:
    img = Image.new("RGB", (128, 96), (37 * i % 256, 91 * i % 256, 200 - 3 * i))
    ImageDraw.Draw(img).ellipse((i % 40, 10, 60 + i % 50, 80), fill=(255 - 5 * i % 256, 220, 40))
    return img


def _infer(labeler, p, photos: range) -> list:
    return [labeler.infer(_photo(i), p, attempt=0, cancelled=lambda: False) for i in photos]


def test_tiny_model_answers_only_yes_no_and_listed_answers_over_50_photos(tiny_models, tmp_path, summary):
    s = config.load(write_config(tmp_path, [tmp_path], tiny_models, extra=QUESTIONS), environ={})
    as_text = tuple(dataclasses.replace(q, kind="text", max_length=10) for q in s.questions[:2])
    labeler = open_labeler(s)
    try:
        runs = _infer(labeler, prompt.build(s.catalog, s.questions), range(50))
        free = _infer(labeler, prompt.build(s.catalog, as_text), range(5))
    finally:
        labeler.close()
    # The control: asked the same two questions as free text, the model answers neither from the list
    # nor yes/no (it writes "0"), so it is the grammar that keeps the answers below closed.
    loose = [json.loads(r.text, strict=False)["answers"] for r in free]
    assert not {a["act"] for a in loose} & {"Act 1", "Act 2", "Act 3"}
    assert not {a["puppeteer_visible"] for a in loose} & {"yes", "no"}
    answers = [json.loads(r.text, strict=False)["answers"] for r in runs]  # the raw reply: the grammar's work alone
    assert {a["puppeteer_visible"] for a in answers} <= {"yes", "no"}
    assert {a["act"] for a in answers} <= {"Act 1", "Act 2", "Act 3"}
    assert all(0 <= a["puppet_count"] <= 12 and len(a["mood"]) <= 30 for a in answers)
    for r in runs:  # and every reply passes bbsd's own validation
        labels.parse_reply(r.text, s.catalog, s.questions)
    seen = {k: sorted({str(a[k]) for a in answers}) for k in ("puppeteer_visible", "act", "puppet_count")}
    summary(f"questions, 50 photos on the tiny model: answers seen {seen}")


def test_tiny_model_cost_of_each_question_type_in_output_tokens(tiny_models, tmp_path, summary):
    """One question of each type against the same prompt without questions, greedy, same photos."""
    s = config.load(write_config(tmp_path, [tmp_path], tiny_models, extra=QUESTIONS), environ={})
    labeler = open_labeler(s)
    try:
        bare = _infer(labeler, prompt.build(s.catalog), range(5))
        cost = {q.kind: _infer(labeler, prompt.build(s.catalog, (q,)), range(5)) for q in s.questions}
    finally:
        labeler.close()

    def extra(runs: list, field: str) -> float:
        return statistics.mean(getattr(r, field) for r in runs) - statistics.mean(getattr(r, field) for r in bare)

    assert all(extra(runs, "output_tokens") > 0 for runs in cost.values())
    assert extra(cost["yes_no"], "sampled_tokens") <= 3  # the rest of the answer and every key are forced
    summary("questions, cost per photo on the tiny model (mean of 5 photos, vs no questions): "
            + ", ".join(f"{kind} +{extra(runs, 'output_tokens'):.1f} output / +{extra(runs, 'sampled_tokens'):.1f} "
                        "sampled tokens" for kind, runs in cost.items()))
