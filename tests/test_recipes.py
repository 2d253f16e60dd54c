"""recipes/*.yaml: each file is a configuration of its own, and benchmarks/recipes.py's variants are those files."""

import importlib.util
from argparse import Namespace
from pathlib import Path

import pytest

from marsseg.config import load_config, to_dict

ROOT = Path(__file__).resolve().parents[1]
RECIPE_FILES = sorted((ROOT / "recipes").glob("*.yaml"))


def fields(config) -> dict:
    """A config as {dotted field: value}; model.options, a mapping of its own, is one field."""
    flat = {}
    for key, value in to_dict(config).items():
        if isinstance(value, dict):  # a section: data, augment, model, ...
            flat.update({f"{key}.{name}": inner for name, inner in value.items()})
        else:
            flat[key] = value
    return flat


def recipes_benchmark():
    spec = importlib.util.spec_from_file_location("recipes_benchmark", ROOT / "benchmarks" / "recipes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_recipes_are_there():
    names = {path.stem for path in RECIPE_FILES}
    assert {"default", "cutmix", "copy_paste", "cross_entropy", "study"} <= names
    assert len(names) >= 50


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda path: path.stem)
def test_every_recipe_loads_and_all_but_the_default_change_a_field(path):
    assert path.read_text().startswith("# "), f"{path.name}: expected a comment saying what the recipe changes"
    default, recipe = fields(load_config(None)), fields(load_config(str(path)))
    changed = sorted(name for name in default if recipe[name] != default[name])
    if path.stem == "default":
        assert changed == []
    else:
        assert changed, f"{path.name} loads as the default config"


def test_the_benchmarks_variants_are_the_recipe_files():
    recipes = recipes_benchmark()
    assert sorted(recipes.VARIANTS) == sorted(path.stem for path in RECIPE_FILES)
    assert recipes.VARIANTS[0] == "default"  # the row every other is compared with comes first
    assert recipes.recipe_fields("default") == {}
    assert recipes.recipe_fields("full_res_unet16") == {
        "model.name": "unet",
        "model.width": 16,
        "model.options": {"levels": 5},
    }


def test_a_variant_trains_the_row_recipe_under_its_files_fields():
    recipes = recipes_benchmark()
    args = Namespace(data="", threads=1, workers=0, epochs=None)
    row = fields(recipes.variant_config(args, "default", 0))
    # recipe A (B with --folds): one network of 40 epochs, no CutMix, the best epoch with early stopping after 15
    assert (row["model.members"], row["optim.epochs"], row["augment.cutmix"]) == (1, 40, 0.0)
    assert (row["optim.keep"], row["optim.early_stopping_patience"], row["tta_scales"]) == ("best", 15, [1.0])
    for name in recipes.VARIANTS:
        own = recipes.recipe_fields(name)
        variant = fields(recipes.variant_config(args, name, 0))
        assert {key: variant[key] for key in own} == own, name
        assert {k: v for k, v in variant.items() if k not in own} == {k: v for k, v in row.items() if k not in own}
    cutmix = fields(recipes.variant_config(args, "cutmix", 0))
    assert cutmix["augment.cutmix"] == 0.5 and cutmix["optim.epochs"] == 40  # C: B with CutMix
    assert fields(recipes.variant_config(Namespace(**{**vars(args), "epochs": 20}), "no_ema", 0))["optim.epochs"] == 20
