import importlib

import pytest

import shared


@pytest.mark.parametrize("name", shared.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(shared, name) is getattr(importlib.import_module(shared._EXPORTS[name]), name)


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError):
        shared.not_a_thing  # noqa: B018
