"""The recipe: loading (ruamel round-trip, located errors), validation, structures."""

from mlip_autopipec.recipe.model import Recipe, SourcedAtoms
from mlip_autopipec.recipe.pseudo import resolve_pseudopotentials
from mlip_autopipec.recipe.schema import load_schema, schema_reference
from mlip_autopipec.recipe.structures import build_structures
from mlip_autopipec.recipe.validate import check_recipe, load_recipe

__all__ = [
    "Recipe",
    "SourcedAtoms",
    "build_structures",
    "check_recipe",
    "load_recipe",
    "load_schema",
    "resolve_pseudopotentials",
    "schema_reference",
]
