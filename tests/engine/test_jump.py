"""Jump-forward decoding: the cursor that says which reply text the schema fixes (pure logic)."""

from __future__ import annotations

import json

from bbsd.engine import prompt
from bbsd.engine.jump import Cursor, Forced
from bbsd.show.catalog import Catalog, CatalogEntry


def _cursor(characters=("Baba Yaga", "Koschei"), props=("lantern",)) -> Cursor:
    catalog = Catalog(tuple(CatalogEntry(n, "d") for n in characters), tuple(CatalogEntry(n, "d") for n in props))
    return Cursor(prompt.build(catalog).schema)


def test_keys_and_punctuation_are_forced_and_choices_are_not():
    c = _cursor()
    assert c.forced("") == Forced('{"characters":[', complete=False)
    assert c.forced('{"characters":[') == Forced("", complete=False)  # a name or the end: the model's choice
    assert c.forced('{"characters":["B') == Forced('aba Yaga"', complete=False)  # unambiguous: the rest of it
    assert c.forced('{"characters":["Baba Yaga"') == Forced("", complete=False)  # another, or the end
    assert c.forced('{"characters":["Baba Yaga","Koschei"') == Forced('],"props":[', complete=False)  # full list
    assert c.forced('{"characters":[],"props":["lantern"') == Forced('],"caption":"', complete=False)
    assert c.forced('{"characters":[],"props":[],"caption":"a puppet') == Forced("", complete=False)
    assert c.forced('{"characters":[],"props":[],"caption":"a \\"big\\" puppet"') == Forced(',"scene":"', False)
    reply = '{"characters":[],"props":[],"caption":"x","scene":"y","visible_text":["z"'
    assert c.forced(reply) == Forced("", complete=False)
    assert c.forced(reply + "]") == Forced("}", complete=True)
    assert c.forced(reply + "]}") == Forced("", complete=True)


def test_the_model_may_write_the_whitespace_the_grammar_allows():
    c = _cursor()
    assert c.forced('{"characters": [ "K') == Forced('oschei"', complete=False)
    assert c.forced('{"characters":["Koschei"] ') == Forced(',"props":[', complete=False)


def test_shared_prefixes_long_strings_and_empty_catalogs():
    c = _cursor(characters=("Fox", "Fox Mother", "Wolf"), props=())
    assert c.forced('{"characters":["Fox') == Forced("", complete=False)  # "Fox" or "Fox Mother"
    assert c.forced('{"characters":["Fox ') == Forced('Mother"', complete=False)
    assert c.forced('{"characters":[],"props":[') == Forced('],"caption":"', complete=False)  # maxItems 0
    long = "a" * prompt.CAPTION_MAX
    assert c.forced('{"characters":[],"props":[],"caption":"' + long) == Forced('","scene":"', complete=False)


def test_text_it_does_not_understand_stops_the_jumping():
    c = _cursor()
    assert c.forced('{"props":') is None
    assert c.forced('{"characters":["Kikimora"') is None
    escaped = _cursor(characters=('Mr. "Moon"',))
    assert escaped.forced('{"characters":[') == Forced("", complete=False)
    assert escaped.forced('{"characters":["M') is None  # escaped names are left to the sampler


def test_every_forced_text_completes_into_a_valid_reply():
    """Follow the cursor from nothing, choosing the first option at each choice: the result parses."""
    settings_catalog = Catalog((CatalogEntry("Baba Yaga", "d"),), (CatalogEntry("lantern", "d"),))
    c = Cursor(prompt.build(settings_catalog).schema)
    text, choices = "", ['"B', '"', 'hi"', 'x"', "]"]
    for _ in range(40):
        f = c.forced(text)
        text += f.text
        if f.complete:
            break
        if not f.text:
            text += choices.pop(0)
    doc = json.loads(text)
    assert not choices and doc["characters"] == ["Baba Yaga"] and doc["caption"] == "hi"
    assert list(doc) == ["characters", "props", "caption", "scene", "visible_text"]


def test_a_growing_reply_gets_what_a_fresh_cursor_says_at_every_step():
    """The cursor skips re-reading a caption while only plain characters are added to it: at every
    prefix of replies with escapes, a full caption and a closed string it answers as a fresh cursor."""
    caption = "a" * (prompt.CAPTION_MAX - 3)
    replies = ['{"characters":["Baba Yaga"],"props":[],"caption":"the witch \\"flies\\" at dawn","scene":"x",'
               '"visible_text":["ok"]}',
               '{"characters":[],"props":["lantern"],"caption":"' + caption + 'bcd","scene":"' + "s" * 50 + '"']
    for reply in replies:
        growing = _cursor()
        for end in range(len(reply) + 1):
            assert growing.forced(reply[:end]) == _cursor().forced(reply[:end]), reply[:end]
    growing = _cursor()
    for step in ('{"characters":[],"props":[],"caption":"a', '{"characters":[],"props":[],"caption":"ab'):
        growing.forced(step)
    assert growing.forced('{"characters":[],"props":[],"caption":"x') == _cursor().forced(
        '{"characters":[],"props":[],"caption":"x')  # not an extension of the last text: read again


def test_closing_closes_the_open_string_list_and_object_and_names_the_fields_cut():
    from bbsd.engine import labels
    from bbsd.engine.jump import Closing

    c = _cursor(characters=("Baba Yaga", "Fox", "Fox Mother"))
    caption = '{"characters":["Baba Yaga"],"props":["lantern"],"caption":"a witch'
    assert c.closing(caption) == Closing('","scene":"","visible_text":[]}', ("caption", "scene", "visible_text"))
    assert c.closing(caption + '"') == Closing(',"scene":"","visible_text":[]}', ("scene", "visible_text"))
    # a list bbsd closes may have been cut short; a full one (maxItems) and a name only one fits are not
    assert c.closing('{"characters":["Baba Yaga"').cut[0] == "characters"
    assert c.closing('{"characters":[],"props":["l').text == 'antern"],"caption":"","scene":"","visible_text":[]}'
    assert c.closing('{"characters":[],"props":["l').cut == ("caption", "scene", "visible_text")
    assert c.closing('{"characters":["Fox').cut[0] == "characters"  # "Fox" or "Fox Mother": cut short
    whole = '{"characters":[],"props":[],"caption":"x","scene":"y","visible_text":["z"]'
    assert c.closing(whole) == Closing("}", ())
    for text in ('{"characters":[],"props":[],"caption":"a \\', '{"characters":[],"props":[],"caption":"a \\u00'):
        closed = text + c.closing(text).text  # an escape cut short is completed, never left open
        labels.parse_reply(closed, Catalog((), ()))
    for text in ('{"characters":["Fo', '{"characters":["'):
        assert c.closing(text) == Closing("", (), complete=False)  # a name is never invented: the model chooses
    assert not c.closing('{"characters":["Baba Yaga",').complete
    assert c.closing('{"props":') is None  # not understood


def test_a_closed_reply_is_labelled_with_what_it_has_and_says_what_was_cut():
    from bbsd.engine import labels

    catalog = Catalog((CatalogEntry("Baba Yaga", "d"),), (CatalogEntry("lantern", "d"),))
    reply = '{"characters":["Baba Yaga"],"props":[],"caption":"a wit","scene":"","visible_text":[],' \
            '"cut":["caption","scene","visible_text"]}'
    parsed = labels.parse_reply(reply, catalog)
    assert parsed.characters == ("Baba Yaga",) and parsed.cut == ("caption", "scene", "visible_text")
    assert parsed.to_json()["cut"] == ["caption", "scene", "visible_text"]
    assert labels.Labels.from_json(parsed.to_json()) == parsed
    assert "cut" not in labels.parse_reply(reply.replace(',"cut":["caption","scene","visible_text"]', ""),
                                           catalog).to_json()  # sidecars of whole replies keep their shape


def test_longest_is_the_length_of_the_longest_reply_the_schema_allows():
    from bbsd.engine.jump import longest
    from bbsd.show.questions import Question

    catalog = Catalog((CatalogEntry("Baba Yaga", "d"), CatalogEntry("Koschei", "d")), (CatalogEntry("lantern", "d"),))
    reply = {"characters": ["Baba Yaga"] * 2, "props": ["lantern"], "caption": "c" * prompt.CAPTION_MAX,
             "scene": "s" * prompt.SCENE_MAX, "visible_text": ["t" * prompt.TEXT_ITEM_MAX] * prompt.TEXT_ITEMS_MAX}
    compact = json.dumps(reply, separators=(",", ":"))
    assert longest(prompt.reply_schema(catalog)) == len(compact)
    mood = Question(key="mood", text="mood?", kind="text", label="Mood", max_length=30)
    count = Question(key="n", text="how many?", kind="integer", label="N", low=0, high=120)
    asked = {**reply, "answers": {"mood": "m" * 30, "n": 120}}
    assert longest(prompt.reply_schema(catalog, (mood, count))) == len(json.dumps(asked, separators=(",", ":")))
    assert longest(prompt.reply_schema(Catalog((), ()))) == len(compact) - len('"Baba Yaga","Baba Yaga"' + '"lantern"')


def test_closing_stops_at_each_answer_the_model_must_choose():
    from bbsd.engine.jump import Closing
    from bbsd.show.questions import Question

    act = Question(key="act", text="act?", kind="choice", label="Act", choices=("Act 1", "Act 2"))
    mood = Question(key="mood", text="mood?", kind="text", label="Mood", max_length=30)
    n = Question(key="n", text="how many?", kind="integer", label="N", low=0, high=12)
    c = Cursor(prompt.reply_schema(Catalog((), ()), (act, mood, n)))
    head = '{"characters":[],"props":[],"caption":"a wit'
    assert c.closing(head) == Closing('","scene":"","visible_text":[],"answers":{"act":"',
                                      ("caption", "scene", "visible_text", "answers"), complete=False)
    chosen = head + '","scene":"","visible_text":[],"answers":{"act":"Act 2"'
    assert c.closing(chosen) == Closing(',"mood":"","n":', ("answers",), complete=False)  # text answers may be empty
    assert c.closing(chosen + ',"mood":"","n":1') == Closing("}}", (), complete=True)  # 1 or 10..12: 1 is whole
    assert c.reserve() == '{"act":"Act 1","mood":"","n":12}'
