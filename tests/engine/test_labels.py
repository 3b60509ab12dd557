"""Replies are validated whatever produced them: only catalog names, no duplicates, bounded text."""

import json

import pytest

from bbsd.engine import prompt
from bbsd.engine.labels import InvalidReplyError, parse_reply
from bbsd.show.catalog import Catalog, CatalogEntry

CAT = Catalog(characters=(CatalogEntry("Baba Yaga"), CatalogEntry("Koschei")), props=(CatalogEntry("lantern"),))


def reply(**over):
    doc = {"characters": ["Koschei"], "props": [], "caption": "a witch", "scene": "stage", "visible_text": []}
    doc.update(over)
    return json.dumps(doc)


def test_valid_reply_is_cleaned_and_deduplicated():
    labels = parse_reply(reply(characters=["Koschei", "Baba Yaga", "Koschei"],
                               caption="  two\x01 puppets \n on stage ", visible_text=["EXIT", "EXIT", ""]), CAT)
    assert labels.characters == ("Koschei", "Baba Yaga")
    assert labels.caption == "two puppets on stage"
    assert labels.visible_text == ("EXIT",)


@pytest.mark.parametrize("text, problem", [
    ("not json", "not JSON"),
    ("[]", "not a JSON object"),
    (reply(characters=["Grinch"]), "'Grinch', which is not in the catalog"),
    (reply(props="lantern"), "'props' is missing or not a list"),
    (reply(caption=None), "'caption' is missing or not a string"),
    (reply(visible_text=[1]), "'visible_text' is missing or not a list of strings"),
    ('{"characters": [], "props": [], "caption": "cut off', "not JSON"),
])
def test_invalid_replies_name_the_problem(text, problem):
    with pytest.raises(InvalidReplyError) as e:
        parse_reply(text, CAT)
    assert problem in e.value.message and e.value.code == "invalid_reply"


def test_schema_enums_are_the_catalog_and_empty_lists_allow_nothing():
    schema = prompt.reply_schema(Catalog(characters=(CatalogEntry("Baba Yaga"),)))
    assert schema["properties"]["characters"]["items"]["enum"] == ["Baba Yaga"]
    assert schema["properties"]["props"] == {"type": "array", "items": {"type": "string"}, "maxItems": 0}
    assert list(schema["properties"]) == ["characters", "props", "caption", "scene", "visible_text"]


def test_prompt_changes_with_the_catalog():
    a = prompt.build(CAT)
    b = prompt.build(Catalog(characters=CAT.characters, props=(CatalogEntry("lantern", "brass"),)))
    assert a.catalog_digest != b.catalog_digest and "Koschei" in a.system
