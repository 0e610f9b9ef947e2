"""What the study's schema says about model inputs, without any data."""

from __future__ import annotations

from fedcare.data.tabular import TabularRecipe
from fedcare.datasets import load_builtin
from fedcare.errors import ConfigError
from fedcare.study.spec import StudySpec

__all__ = ["n_encoded_features", "recipe_of"]


def recipe_of(study: StudySpec) -> TabularRecipe:
    """The encoding recipe every site applies (split, one-hot, standardise)."""
    schema = study.data.schema
    if schema is None:
        raise ConfigError(f"{study.where}: a built-in data set brings its own preparation")
    return schema.recipe(test_fraction=study.data.test_fraction, seed=study.data.split_seed)


def n_encoded_features(study: StudySpec) -> int:
    """Model inputs after one-hot encoding: from the schema, or the built-in data set's."""
    if study.data.schema is not None:
        return len(recipe_of(study).encoded_names())
    assert study.data.dataset is not None
    return load_builtin(study.data.dataset).n_features
