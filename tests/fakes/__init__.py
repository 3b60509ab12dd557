"""Test doubles, kept with the tests and loaded into bbsd processes as plugins
(docs/developer/plugins.md): the shipped package holds no fake.

`engine`: the `fake` backend (FakeLabeler), which every process the suite starts loads.
"""

ENGINE = "tests.fakes.engine"
