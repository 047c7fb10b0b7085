"""The name -> builder registry: registration by decorator, refusals, the choices named when a name is unknown."""

from __future__ import annotations

import pytest

from mmcore.registry import Registry


@pytest.fixture
def towers() -> Registry:
    reg: Registry = Registry("image encoder")

    @reg.register("zeta")
    def build_zeta() -> str:
        return "zeta"

    @reg.register()  # no name: the builder's own
    def tiny_alpha() -> str:
        return "alpha"

    return reg


def test_registered_builders_are_returned_unchanged_by_name(towers):
    assert towers.get("zeta")() == "zeta" and towers.get("tiny_alpha")() == "alpha"
    assert towers.get("zeta").__name__ == "build_zeta"  # the decorator hands the function back as it was


def test_names_are_sorted_and_in_tells_membership(towers):
    assert towers.names() == ["tiny_alpha", "zeta"]
    assert "zeta" in towers and "tiny_alpha" in towers
    assert "build_zeta" not in towers and 3 not in towers and None not in towers


def test_a_name_registered_twice_is_refused_and_the_first_kept(towers):
    with pytest.raises(ValueError, match="image encoder 'zeta' is registered twice"):

        @towers.register("zeta")
        def another() -> str:
            return "another"

    assert towers.get("zeta")() == "zeta" and towers.names() == ["tiny_alpha", "zeta"]


def test_an_unknown_name_lists_the_choices(towers):
    with pytest.raises(KeyError) as err:
        towers.get("densenet")
    assert err.value.args[0] == "unknown image encoder 'densenet'; choose one of: tiny_alpha, zeta"


def test_registries_are_independent():
    first: Registry = Registry("fusion")
    second: Registry = Registry("fusion")
    first.register("mean")(lambda: "mean")
    assert "mean" in first and "mean" not in second and second.names() == []
    with pytest.raises(KeyError) as err:
        second.get("mean")
    assert err.value.args[0] == "unknown fusion 'mean'; choose one of: "
