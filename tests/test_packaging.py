"""The wheel ships every subpackage, the recipes, the card templates and the metric modules."""

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_for_the_wheel():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "hf_metatransfer").rglob("__init__.py")
    }
    assert on_disk <= listed, f"missing from [tool.setuptools] packages: {sorted(on_disk - listed)}"
    assert config["package-dir"] == {
        "hf_metatransfer.recipes": "recipes",
        "hf_metatransfer.model_cards": "model_cards",
    }


def test_recipes_and_cards_import_from_the_package():
    import hf_metatransfer.model_cards
    import hf_metatransfer.recipes.finetune  # noqa: F401

    assert Path(hf_metatransfer.model_cards.__file__).parent == ROOT / "model_cards"
