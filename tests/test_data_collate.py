"""Collator: processor inputs, nearest-neighbour labels, Mask Grounding masking, seeding, DataLoader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_fixtures import make_processor
from PIL import Image
from torch.utils.data import DataLoader

from magnet_hf.data import (
    DataCollatorForReferringSegmentation,
    PhotometricAugment,
    build_synthetic_dataset,
    explode_sentences,
    mask_tokens,
)

SIZE = 32


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    return make_processor(tmp_path_factory.mktemp("tok"), size=SIZE, max_length=20)


@pytest.fixture(scope="module")
def data():
    return build_synthetic_dataset(num_images={"train": 12, "val": 4}, image_size=64, seed=0, sentences_per_ref=3)


def rows(dataset, n=None):
    return [dataset[i] for i in range(dataset.num_rows if n is None else n)]


def test_batch_keys_shapes_and_dtypes(processor, data):
    batch = DataCollatorForReferringSegmentation(processor)(rows(data["train"], 6))
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "labels", "masked_input_ids", "mlm_labels"}
    assert batch["pixel_values"].shape == (6, 3, SIZE, SIZE) and batch["pixel_values"].dtype == torch.float32
    for key in ("input_ids", "attention_mask", "masked_input_ids", "mlm_labels"):
        assert batch[key].shape == (6, 20) and batch[key].dtype == torch.long, key
    assert batch["labels"].shape == (6, SIZE, SIZE) and batch["labels"].dtype == torch.float32
    assert (batch["input_ids"][:, 0] == processor.tokenizer.cls_token_id).all()
    assert not (batch["input_ids"] == processor.tokenizer.unk_token_id).any()  # vocab covers the synthetic words
    evaluation = DataCollatorForReferringSegmentation(processor, train=False)(rows(data["val"], 3))
    assert set(evaluation) == {"pixel_values", "input_ids", "attention_mask", "labels"}


def test_labels_are_nearest_neighbour_resized_masks(processor, data):
    collator = DataCollatorForReferringSegmentation(processor, train=False)
    sample = rows(data["train"], 4)
    batch = collator(sample)
    assert set(torch.unique(batch["labels"]).tolist()) == {0.0, 1.0}
    for label, row in zip(batch["labels"], sample):
        expected = np.asarray(row["mask"].resize((SIZE, SIZE), Image.NEAREST)).astype(np.float32)
        np.testing.assert_array_equal(label.numpy(), expected)
    # a fine checkerboard would blend under any smoothing filter; nearest keeps it binary
    board = (np.indices((64, 48)).sum(axis=0) % 2).astype(np.uint8)
    odd = dict(sample[0], mask=Image.fromarray(board, mode="L"), image=Image.new("RGB", (48, 64)))
    labels = collator([odd])["labels"]
    assert set(torch.unique(labels).tolist()) == {0.0, 1.0}


def test_masking_respects_special_and_padding_tokens(processor, data):
    tokenizer = processor.tokenizer
    batch = DataCollatorForReferringSegmentation(processor, seed=3)(rows(data["train"]))
    ids, attn, masked, mlm = batch["input_ids"], batch["attention_mask"], batch["masked_input_ids"], batch["mlm_labels"]
    protected = torch.isin(ids, torch.tensor(tokenizer.all_special_ids)) | (attn == 0)
    assert (attn == 0).any() and protected.any()
    assert torch.equal(masked[protected], ids[protected])
    assert (mlm[protected] == -100).all()
    chosen = mlm != -100
    assert torch.equal(mlm[chosen], ids[chosen])  # the original id on masked positions
    assert torch.equal(masked[~chosen], ids[~chosen])  # nothing else changes
    assert set(masked[chosen & (masked != ids)].tolist()) <= {tokenizer.mask_token_id}
    assert chosen.any()


def test_mask_tokens_follow_the_authors_bernoulli_rule():
    # 4,000 sentences of 6 maskable tokens between [CLS]/[SEP] and padding: each token is chosen independently with
    # p = 0.15 and a chosen one becomes [MASK] with p = 0.9 (OVR-CNN's rule, which the MagNet authors point to).
    rows, length = 4000, 12
    ids = torch.randint(10, 200, (rows, length))
    ids[:, 0], ids[:, 7] = 2, 3
    attention = torch.ones_like(ids)
    attention[:, 8:] = 0
    gens = [np.random.default_rng(i) for i in range(rows)]
    masked, labels = mask_tokens(ids, attention, mask_token_id=4, special_ids=[0, 1, 2, 3, 4], generators=gens)
    chosen = labels != -100
    assert not chosen[:, 8:].any() and not chosen[:, 0].any() and not chosen[:, 7].any()
    n = rows * 6
    rate = chosen[:, 1:7].double().mean().item()
    assert abs(rate - 0.15) < 4 * (0.15 * 0.85 / n) ** 0.5  # within 4 standard errors
    replaced = (masked[chosen] == 4).double().mean().item()
    assert abs(replaced - 0.9) < 4 * (0.9 * 0.1 / chosen.sum().item()) ** 0.5
    assert torch.equal(masked[chosen & (masked != 4)], ids[chosen & (masked != 4)])  # the rest keep their id
    # The count per sentence is binomial, not fixed: sentences with none occur (0.85^6 = 0.377 of them).
    counts = chosen.sum(1)
    none = (counts == 0).double().mean().item()
    assert abs(none - 0.85**6) < 4 * (0.377 * 0.623 / rows) ** 0.5
    assert counts.max().item() >= 3
    # Tokens are chosen independently of their position.
    per_position = chosen[:, 1:7].double().mean(0)
    assert (per_position - 0.15).abs().max().item() < 4 * (0.15 * 0.85 / rows) ** 0.5
    masked, labels = mask_tokens(ids, attention, mask_token_id=4, special_ids=[0, 1, 2, 3, 4], generators=gens,
                                 ratio=0.5, replace_prob=0.0)  # fmt: skip
    assert torch.equal(masked, ids) and abs((labels[:, 1:7] != -100).double().mean().item() - 0.5) < 0.02
    masked, labels = mask_tokens(ids, attention, mask_token_id=4, special_ids=[], generators=gens, ratio=0.0)
    assert torch.equal(masked, ids) and (labels == -100).all()
    with pytest.raises(ValueError, match="one generator per row"):
        mask_tokens(ids, attention, mask_token_id=4, special_ids=[], generators=gens[:2])


def test_reproducible_and_order_independent(processor, data):
    sample = rows(data["train"], 8)
    a = DataCollatorForReferringSegmentation(processor, seed=11)(sample)
    b = DataCollatorForReferringSegmentation(processor, seed=11)(sample)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    reversed_batch = DataCollatorForReferringSegmentation(processor, seed=11)(sample[::-1])
    for key in a:
        assert torch.equal(a[key], reversed_batch[key].flip(0)), key
    c = DataCollatorForReferringSegmentation(processor, seed=12)(sample)
    assert not torch.equal(a["mlm_labels"], c["mlm_labels"])


def test_one_random_sentence_per_epoch_in_training(processor, data):
    row = next(r for r in rows(data["train"]) if len(r["sentences"]) == 3)
    collator = DataCollatorForReferringSegmentation(processor, seed=0)
    picked = []
    for epoch in range(12):
        collator.set_epoch(epoch)
        picked.append(processor.tokenizer.decode(collator([row])["input_ids"][0], skip_special_tokens=True))
    assert set(picked) == set(row["sentences"])
    collator.set_epoch(3)
    assert processor.tokenizer.decode(collator([row])["input_ids"][0], skip_special_tokens=True) == picked[3]
    evaluation = DataCollatorForReferringSegmentation(processor, train=False)
    assert processor.tokenizer.decode(evaluation([row])["input_ids"][0], skip_special_tokens=True) == row["sentences"][0]


def test_evaluation_covers_every_sentence_via_explode(processor, data):
    exploded = explode_sentences(data["val"])
    collator = DataCollatorForReferringSegmentation(processor, train=False)
    batch = collator(rows(exploded))
    decoded = [processor.tokenizer.decode(ids, skip_special_tokens=True) for ids in batch["input_ids"]]
    assert decoded == [s for sentences in data["val"]["sentences"] for s in sentences]


@pytest.mark.parametrize("via", ["collate_fn", "with_transform"])
def test_dataloader_with_two_workers(processor, data, via):
    collator = DataCollatorForReferringSegmentation(processor, seed=5)
    collator.set_epoch(2)
    train = data["train"]
    if via == "collate_fn":
        loader = DataLoader(train, batch_size=4, num_workers=2, collate_fn=collator)
    else:
        loader = DataLoader(train.with_transform(collator.transform), batch_size=4, num_workers=2)
    batches = list(loader)
    assert sum(b["labels"].shape[0] for b in batches) == train.num_rows
    expected = [collator(rows(train.select(range(i, min(i + 4, train.num_rows))))) for i in range(0, train.num_rows, 4)]
    for got, want in zip(batches, expected):
        assert set(got) == set(want)
        for key in want:
            assert torch.equal(got[key], want[key]), key


def test_augmentation_is_off_by_default_and_training_only(processor, data):
    sample = rows(data["train"], 4)
    plain = DataCollatorForReferringSegmentation(processor, seed=1)(sample)
    augmented = DataCollatorForReferringSegmentation(processor, seed=1, augment=PhotometricAugment(0.5, 0.5, 0.5))
    batch = augmented(sample)
    assert not torch.allclose(batch["pixel_values"], plain["pixel_values"])
    assert torch.equal(batch["labels"], plain["labels"]) and torch.equal(batch["mlm_labels"], plain["mlm_labels"])
    assert torch.equal(augmented(sample)["pixel_values"], batch["pixel_values"])  # seeded
    evaluation = DataCollatorForReferringSegmentation(processor, train=False, augment=PhotometricAugment(0.5))
    plain_eval = DataCollatorForReferringSegmentation(processor, train=False)
    assert torch.equal(evaluation(sample)["pixel_values"], plain_eval(sample)["pixel_values"])


def test_invalid_arguments(processor):
    with pytest.raises(ValueError, match="mask_ratio"):
        DataCollatorForReferringSegmentation(processor, mask_ratio=1.5)
    with pytest.raises(ValueError, match="image_processor.size"):
        DataCollatorForReferringSegmentation(object())
    with pytest.raises(ValueError, match="seed"):
        DataCollatorForReferringSegmentation(processor, seed=-1)
