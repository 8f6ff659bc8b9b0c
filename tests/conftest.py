"""Shared test fixtures: a tiny offline BERT tokenizer, a magnet-tiny model and the released-network fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPOSITORY = Path(__file__).resolve().parents[1]
# CI clones the repository with the steering repo's shared/ folder beside it.
OFFICIAL_FIXTURES = Path(os.environ.get("MAGNET_FIXTURES", REPOSITORY.parent / "shared" / "fixtures"))

TEST_WORDS = (
    "the a left right of to on in red green blue yellow small big biggest smallest circle square triangle "
    "shape second first third from man woman shirt dog cat next above below"
).split()


def write_test_tokenizer(folder: Path) -> Path:
    """A BERT WordPiece tokenizer with a handful of words (bert-base-uncased cannot be downloaded here)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TEST_WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
    from transformers import BertTokenizer

    BertTokenizer.from_pretrained(str(folder)).save_pretrained(str(folder))  # a complete folder, as users have
    return folder


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return write_test_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import BertTokenizer

    return BertTokenizer.from_pretrained(str(tokenizer_dir))


@pytest.fixture(scope="session")
def tiny_processor(tokenizer):
    from magnet_hf import MagNetImageProcessor, MagNetProcessor

    return MagNetProcessor(MagNetImageProcessor(size={"height": 128, "width": 128}), tokenizer)


@pytest.fixture()
def tiny_model():
    from magnet_hf import MagNetConfig, MagNetForReferringSegmentation

    torch.manual_seed(0)
    return MagNetForReferringSegmentation(MagNetConfig.from_preset("magnet-tiny")).eval()


@pytest.fixture(scope="session")
def official_fixtures() -> Path:
    if not (OFFICIAL_FIXTURES / "official-tiny" / "official_state_dict.safetensors").is_file():
        message = f"released-network fixtures not found at {OFFICIAL_FIXTURES} (set MAGNET_FIXTURES)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return OFFICIAL_FIXTURES


def pytest_configure(config):
    # Markers of transformers' common test mixins and of the decorators of `transformers.testing_utils` they use
    # (`@slow` is `pytest.mark.slow`); test_conformance.py runs them under --strict-markers.
    markers = (
        "accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test", "torch_compile_test",
        "slow", "order", "is_agent_test", "is_expert_parallel_test", "is_fsdp_test", "is_pipeline_test",
        "is_staging_test", "is_tensor_parallel_test", "is_training_test",
    )
    for name in markers:
        config.addinivalue_line("markers", f"{name}: marker of transformers' common tests")
