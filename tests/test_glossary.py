"""The paper-name glossary at the top of modeling_magnet.py names real classes, and the page it points to exists."""

from __future__ import annotations

import re
from pathlib import Path

import magnet_hf.modeling_magnet as modeling

REPOSITORY = Path(__file__).resolve().parents[1]


def _glossary_rows() -> list[list[str]]:
    rows = [line for line in modeling.__doc__.splitlines() if line.startswith("| ") and not line.startswith("| paper")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_every_class_in_the_glossary_exists_and_every_magnet_module_is_listed():
    rows = _glossary_rows()
    assert len(rows) >= 10
    named = {name for _, classes, _ in rows for name in re.findall(r"`(MagNet\w+)`", classes)}
    missing = sorted(name for name in named if not hasattr(modeling, name))
    assert not missing, f"glossary names classes that do not exist: {missing}"
    # Every network part defined in the module has its paper name in the glossary (outputs and bases excepted).
    parts = {
        name for name, value in vars(modeling).items()
        if isinstance(value, type) and value.__module__ == modeling.__name__ and issubclass(value, modeling.nn.Module)
    }
    unlisted = sorted(parts - named - {"MagNetPreTrainedModel", "MagNetModel", "MagNetForReferringSegmentation"})
    assert not unlisted, f"modules without a glossary row: {unlisted}"


def test_the_released_behaviour_page_is_in_the_repository():
    assert "docs/released_network.md" in modeling.__doc__
    page = (REPOSITORY / "docs" / "released_network.md").read_text()
    assert "Pad before the cyclic shift" in page and "additive mask" in page
