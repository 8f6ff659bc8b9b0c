"""A small BERT WordPiece tokenizer built from a corpus, for models trained from scratch offline.

The released processor pads with id 0, so ``[PAD]`` must be id 0; the other BERT special tokens
follow in BERT's order (``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3, ``[MASK]`` 4).

The vocabulary is chosen deterministically rather than with ``tokenizers``' ``WordPieceTrainer``, whose
choice among equally frequent candidates changes from process to process: a run resumed in a new process
must rebuild exactly the same ids.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int = 1000, lowercase: bool = True):
    """Build a BERT-style WordPiece tokenizer from ``texts``.

    The vocabulary is the special tokens, every character of the corpus (alone and as a ``##`` continuation,
    so no word of this alphabet is ever ``[UNK]``), then whole words by decreasing frequency (ties in
    alphabetical order) until ``vocab_size`` tokens; the same texts always give the same ids.

    Args:
        texts: training sentences (e.g. every expression of the training split).
        vocab_size: size bound of the vocabulary, special tokens included; the special tokens and the
            alphabet are always kept, even when they alone exceed it.
        lowercase: lower-case and strip accents, as ``bert-base-uncased`` does.

    Returns:
        ``transformers.BertTokenizerFast`` with ``[PAD]`` = 0, ``[UNK]`` = 1, ``[CLS]`` = 2, ``[SEP]`` = 3,
        ``[MASK]`` = 4 and BERT's ``[CLS] ... [SEP]`` template; ``len(tokenizer)`` is the vocabulary size.

    Raises:
        ValueError: no non-empty text.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase or None)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        if isinstance(text, str) and text.strip():
            counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    if not counts:
        raise ValueError("train_wordpiece_tokenizer needs at least one non-empty sentence.")
    characters = sorted({character for word in counts for character in word})
    vocabulary = list(SPECIAL_TOKENS) + characters + [f"##{character}" for character in characters]
    ranked = sorted((word for word in counts if len(word) > 1), key=lambda word: (-counts[word], word))
    vocabulary += ranked[: max(0, vocab_size - len(vocabulary))]
    tokenizer = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocabulary)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return BertTokenizerFast(
        tokenizer_object=tokenizer,
        do_lower_case=lowercase,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
    )
