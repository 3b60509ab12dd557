"""Test doubles and fault injection, kept with the tests and loaded into bbsd processes as plugins
(docs/developer/plugins.md): the shipped package holds no fake and no test hook.

`engine`: the `fake` backend (FakeLabeler), which every process the suite starts loads; `faults`: fault
injection at the seams of the daemon, the engine worker and the decoder, loaded by the tests that
inject faults (`FAULTS`); `servers`: llama-server on loopback for the openai backend's tests and bench.
"""

ENGINE = "tests.fakes.engine"
FAULTS = {"BBSD_PLUGINS": f"{ENGINE},tests.fakes.faults"}  # the environment of a process that takes faults
