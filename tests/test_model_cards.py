"""Model cards: the released-checkpoint cards match their generator and the published numbers; the trained-model
template is filled from evaluation JSON; the demo model's card says what it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from magnet_hf.hub.model_cards import (
    PUBLISHED_OIOU,
    RELEASED_CHECKPOINTS,
    ModelCardError,
    card_from_evaluations,
    released_checkpoint_card,
)

CARDS = Path(__file__).resolve().parents[1] / "model_cards"


@pytest.mark.parametrize("checkpoint", RELEASED_CHECKPOINTS, ids=lambda c: c.name)
def test_released_cards_are_current_and_carry_the_published_numbers(checkpoint):
    path = CARDS / f"{checkpoint.name}.md"
    assert path.read_text() == released_checkpoint_card(checkpoint), "regenerate model_cards/ from magnet_hf.hub.model_cards"
    card = ModelCard.load(path)
    assert card.data.license == "agpl-3.0" and "AGPL-3.0" in card.text
    assert checkpoint.weight_file in card.text and "scripts/evaluate.py" in card.text
    recorded = {(r.dataset_type, r.dataset_split): r.metric_value for r in card.data.eval_results or []}
    expected = {key: value for key, value in PUBLISHED_OIOU.items() if key[0] in checkpoint.datasets}
    assert recorded == expected
    assert all(r.metric_config == "published" and not r.verified for r in card.data.eval_results or [])


def evaluation_json(path: Path, split: str, overall: float) -> Path:
    path.write_text(json.dumps({
        "model": "m", "dataset": "data/refcoco_unc", "split": split, "resolution": "released", "num_samples": 10,
        "metrics": {"overall_iou": overall, "mean_iou": overall - 0.01, "precision@0.5": 0.7},
    }))
    return path


def test_trained_card_is_filled_from_evaluation_json(tmp_path):
    results = [evaluation_json(tmp_path / "val.json", "val", 0.7012), evaluation_json(tmp_path / "testA.json", "testA", 0.7345)]
    output = card_from_evaluations(
        CARDS / "magnet-trained.md", results, tmp_path / "README.md",
        replacements={"<model-name>": "magnet-ft", "<training-command>": "python scripts/train.py ..."},
    )
    card = ModelCard.load(output)
    assert "# magnet-ft" in card.text and "<model-name>" not in card.text and card.data.model_name == "magnet-ft"
    values = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert values[("val", "overall_iou")] == 70.12 and values[("testA", "overall_iou")] == 73.45
    assert values[("val", "precision@0.5")] == 70.0
    with pytest.raises(ModelCardError, match="already exists"):
        card_from_evaluations(CARDS / "magnet-trained.md", results, output)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ModelCardError, match="not an evaluation JSON"):
        card_from_evaluations(CARDS / "magnet-trained.md", [tmp_path / "bad.json"], tmp_path / "other.md")
    assert not (tmp_path / "other.md").exists()


def test_demo_model_card_says_it_knows_synthetic_scenes_only():
    text = (CARDS / "magnet-tiny-synthetic.md").read_text()
    assert "knows synthetic scenes only" in text
    assert "WordPiece" in text and "tokenizers" in text
