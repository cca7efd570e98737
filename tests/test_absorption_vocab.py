"""Words of SentencePiece-style tokenizers (spaces marked "▁") keep their leading space, as in SAEBench."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from transcoderbench.absorption.prompts import context_text
from transcoderbench.absorption.vocab import letter_vocabulary


def metaspace_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<bos>": 1, "▁cat": 2, "cat": 3, "▁Dog": 4, "▁": 5, "▁x1": 6, "ab": 7}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", unk_token="<unk>")


def test_space_marked_tokens_keep_their_leading_space():
    tok = metaspace_tokenizer()
    assert tok.convert_tokens_to_string(["▁cat"]) == "cat"  # what decoding one token alone gives
    words = letter_vocabulary(tok)
    assert [(w.token_id, w.text, w.letter) for w in words] == [
        (2, " cat", 2),
        (3, "cat", 2),
        (4, " Dog", 3),
        (7, "ab", 0),
    ]
    # the examples are shown with their space, as the model sees them in running text
    assert context_text(words[:1], "{word} has the first letter:") == "\n cat has the first letter: C\n"
