"""The README stays true: its settings tables match the settings classes."""

from ragstream.settings_doc import BEGIN, END, README, render


def test_settings_tables_are_current() -> None:
    text = README.read_text(encoding="utf-8")
    block = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert block == render(), "run `python -m ragstream.settings_doc` to regenerate"
