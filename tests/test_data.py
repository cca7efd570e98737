"""Token sources, packing, sharding and masks, checked against tokenizing by hand."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from tiny_tokenizer import make_tiny_tokenizer
from transcoderbench.data import (
    TextSource,
    count_available_sequences,
    keep_mask,
    resolve_text_source,
    special_token_ids,
    token_batches,
)
from transcoderbench.errors import UserError

PAD, BOS, EOS = 0, 1, 2


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return make_tiny_tokenizer()


def _variant(base: PreTrainedTokenizerFast, **special: str) -> PreTrainedTokenizerFast:
    """The tiny tokenizer with other special-token roles (same vocabulary, fresh backend)."""
    backend = Tokenizer.from_str(base.backend_tokenizer.to_str())
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special)


def _hand_stream(docs: list[str], tokenizer, sep: int | None) -> list[int]:
    """The reference stream: each document tokenized alone, joined with ``sep`` (if any)."""
    stream: list[int] = []
    for doc in docs:
        ids = tokenizer.encode(doc, add_special_tokens=False)
        if not ids:
            continue
        if stream and sep is not None:
            stream.append(sep)
        stream.extend(ids)
    return stream


def _all(source, tokenizer, **kw) -> list:
    return list(token_batches(source, tokenizer, **kw))


def _write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


DOCS = [
    "The quick brown fox jumps over the lazy dog. " * 7,
    "Lambda expressions create anonymous functions; the body is a single expression.",
    "A literal <pad> token and a literal <bos> inside text are special ids too.",
    "Short one.",
    "Assignment statements bind names to values and modify attributes or items. " * 5,
]


@pytest.fixture()
def jsonl_source(tmp_path) -> TextSource:
    path = tmp_path / "docs.jsonl"
    lines = (json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(DOCS))
    path.write_text("".join(lines), encoding="utf-8")
    return resolve_text_source(str(path))


# ---------------------------------------------------------------------------------------------
# built-in corpus


def test_builtin_corpus_is_pydoc_topics_in_sorted_order(tok):
    import pydoc_data.topics

    source = resolve_text_source(None)
    assert source.kind == "builtin" and source.name == "builtin:pydoc_data.topics"
    topics = pydoc_data.topics.topics
    assert list(source.texts()) == [topics[k] for k in sorted(topics) if topics[k].strip()]
    assert source.describe()["kind"] == "builtin"
    n_seq = count_available_sequences(source, tok, seq_len=129)
    assert n_seq * 128 > 100_000  # ~217k tiny-tokenizer tokens; SmolLM2 gives ~113k


def test_builtin_batches_are_deterministic(tok):
    first = _all(resolve_text_source(None), tok, seq_len=64, batch_size=8)
    second = _all(resolve_text_source(""), tok, seq_len=64, batch_size=8)
    assert len(first) == len(second) > 100
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.input_ids, b.input_ids)
        assert torch.equal(a.keep, b.keep)
        assert torch.equal(a.seq_index, b.seq_index)


def test_builtin_variants(tok):
    docs = list(resolve_text_source("builtin:stdlib-docstrings").texts())
    assert len(docs) > 500 and all(len(d) >= 40 for d in docs)
    assert docs == list(resolve_text_source("builtin:stdlib-docstrings").texts())
    assert len(set(docs)) == len(docs)
    everything = list(resolve_text_source("builtin:all").texts())
    pydoc = list(resolve_text_source("builtin:pydoc-topics").texts())
    assert everything == pydoc + docs
    with pytest.raises(UserError, match="unknown built-in corpus"):
        resolve_text_source("builtin:nope")


# ---------------------------------------------------------------------------------------------
# packing, masks


@pytest.mark.parametrize("seq_len,batch_size", [(8, 3), (17, 2), (2, 5)])
def test_packing_reproduces_hand_tokenized_stream(tok, jsonl_source, seq_len, batch_size):
    stream = _hand_stream(DOCS, tok, sep=EOS)
    assert PAD in stream and BOS in stream and stream.count(EOS) >= len(DOCS) - 1
    batches = _all(jsonl_source, tok, seq_len=seq_len, batch_size=batch_size)
    n_seq = len(stream) // (seq_len - 1)
    assert len(batches) == n_seq // batch_size > 0  # tail piece and partial batch dropped
    rows = torch.cat([b.input_ids for b in batches])
    assert torch.equal(torch.cat([b.seq_index for b in batches]), torch.arange(rows.shape[0]))
    for b in batches:
        assert b.input_ids.shape == (batch_size, seq_len) and b.input_ids.dtype == torch.int64
        assert b.attention_mask.dtype == torch.int64 and bool((b.attention_mask == 1).all())
        assert b.keep.dtype == torch.bool and b.seq_index.dtype == torch.int64
        assert bool((b.input_ids[:, 0] == BOS).all())
        ids = b.input_ids.numpy()
        assert np.array_equal(b.keep.numpy(), (ids != PAD) & (ids != BOS) & (ids != EOS))
    body = rows[:, 1:].reshape(-1).tolist()
    assert body == stream[: len(body)]
    assert len(body) == (n_seq // batch_size) * batch_size * (seq_len - 1)


def test_without_eos_between_documents(tok, jsonl_source):
    stream = _hand_stream(DOCS, tok, sep=None)
    batches = _all(jsonl_source, tok, seq_len=9, batch_size=1, add_eos_between_documents=False)
    body = torch.cat([b.input_ids[:, 1:] for b in batches]).reshape(-1).tolist()
    assert body == stream[: len(body)] and len(body) == len(stream) // 8 * 8


def test_smollm2_and_gpt2_style_special_tokens(tok, jsonl_source):
    smol = _variant(tok, bos_token="<bos>", eos_token="<eos>", pad_token="<eos>")  # pad == eos
    assert special_token_ids(smol) == {BOS, EOS}
    gpt2 = _variant(tok, bos_token="<eos>", eos_token="<eos>")  # bos == eos, no pad
    assert special_token_ids(gpt2) == {EOS}
    no_bos = _variant(tok, eos_token="<eos>")  # Qwen2-like: starts sequences with EOS
    assert special_token_ids(no_bos) == {EOS}
    for tokenizer, start in ((smol, BOS), (gpt2, EOS), (no_bos, EOS)):
        stream = _hand_stream(DOCS, tokenizer, sep=EOS)
        batches = _all(jsonl_source, tokenizer, seq_len=12, batch_size=2)
        ids = torch.cat([b.input_ids for b in batches])
        keep = torch.cat([b.keep for b in batches])
        assert bool((ids[:, 0] == start).all())
        assert ids[:, 1:].reshape(-1).tolist() == stream[: ids.shape[0] * 11]
        specials = special_token_ids(tokenizer)
        expected = ~np.isin(ids.numpy(), sorted(specials))
        assert np.array_equal(keep.numpy(), expected)
        # a literal "<pad>" in the text is pad id 0, which only counts as special when it is the pad
        assert bool((ids == PAD).any()) and bool(keep[ids == PAD].all())


def test_keep_mask_respects_attention_mask():
    ids = torch.tensor([[1, 5, 6, 2, 7], [1, 8, 0, 9, 9]])
    attn = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    expected = torch.tensor([[False, True, True, False, True], [False, True, False, True, False]])
    assert torch.equal(keep_mask(ids, attn, {0, 1, 2}), expected)


# ---------------------------------------------------------------------------------------------
# sharding, counts, laziness


def test_sharding_covers_single_process_sequences_exactly(tok):
    source = resolve_text_source(None)
    single = _all(source, tok, seq_len=32, batch_size=6)
    ranks = [_all(source, tok, seq_len=32, batch_size=3, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)  # ranks stay in step
    by_index: dict[int, torch.Tensor] = {}
    for r, batches in enumerate(ranks):
        for b in batches:
            assert b.input_ids.shape == (3, 32)
            assert bool((b.seq_index % 2 == r).all())
            for i, row in zip(b.seq_index.tolist(), b.input_ids, strict=True):
                assert i not in by_index  # no overlap
                by_index[i] = row
    single_rows = torch.cat([b.input_ids for b in single])
    single_index = torch.cat([b.seq_index for b in single]).tolist()
    assert sorted(by_index) == single_index == list(range(len(single_index)))
    for i in single_index:
        assert torch.equal(by_index[i], single_rows[i])


def test_seq_index_is_global_for_uneven_world(tok, jsonl_source):
    whole = torch.cat([b.input_ids for b in _all(jsonl_source, tok, seq_len=5, batch_size=1)])
    for r in range(3):
        for b in _all(jsonl_source, tok, seq_len=5, batch_size=2, rank=r, world_size=3):
            assert torch.equal(b.input_ids, whole[b.seq_index])


def test_n_batches_and_exhaustion(tok, jsonl_source):
    total = len(_all(jsonl_source, tok, seq_len=8, batch_size=3))
    assert total >= 4
    assert len(_all(jsonl_source, tok, seq_len=8, batch_size=3, n_batches=2)) == 2
    assert len(_all(jsonl_source, tok, seq_len=8, batch_size=3, n_batches=total + 50)) == total
    assert _all(jsonl_source, tok, seq_len=8, batch_size=3, n_batches=0) == []
    stream = _hand_stream(DOCS, tok, sep=EOS)  # EOS *between* documents: none at the end
    n_seq = count_available_sequences(jsonl_source, tok, seq_len=8)
    assert n_seq == len(stream) // 7 and total == n_seq // 3
    assert count_available_sequences(jsonl_source, tok, seq_len=2) == len(stream)


def test_too_little_text_for_one_batch_is_a_user_error(tok, jsonl_source):
    with pytest.raises(UserError, match="too little text for one batch"):
        _all(jsonl_source, tok, seq_len=512, batch_size=4)


@pytest.mark.parametrize("kw,msg", [({"seq_len": 1}, "data.seq_len"), ({"batch_size": 0}, "data.batch_size")])
def test_bad_sizes(tok, jsonl_source, kw, msg):
    args = {"seq_len": 8, "batch_size": 2} | kw
    with pytest.raises(UserError, match=msg):
        _all(jsonl_source, tok, **args)


@dataclass
class _EndlessSource(TextSource):
    """Never runs out; counts how many documents were pulled."""

    pulled: int = 0

    def texts(self) -> Iterator[str]:
        for i in itertools.count():
            self.pulled += 1
            yield f"Document number {i} talks about topic {i % 7}. " * 3


def test_tokenizes_lazily(tok):
    source = _EndlessSource(name="endless")
    batches = _all(source, tok, seq_len=16, batch_size=4, n_batches=3)
    assert len(batches) == 3
    assert source.pulled < 200  # a few chunks, not the whole (infinite) stream


# ---------------------------------------------------------------------------------------------
# local files


def test_txt_documents_are_blank_line_separated_blocks(tmp_path, tok):
    path = _write(tmp_path / "a.txt", "First line\nstill first.\n\n\n  \nSecond doc.\n\nThird\n")
    source = resolve_text_source(str(path))
    assert source.kind == "files" and source.describe()["files"] == [str(path)]
    assert list(source.texts()) == ["First line\nstill first.", "Second doc.", "Third"]


def test_jsonl_custom_text_field(tmp_path):
    path = _write(tmp_path / "b.jsonl", '{"body": "alpha beta", "text": 3}\n\n{"body": "gamma"}\n')
    source = resolve_text_source(str(path), text_field="body")
    assert list(source.texts()) == ["alpha beta", "gamma"]
    assert source.describe()["text_field"] == "body"


def test_folder_is_recursive_and_sorted(tmp_path, tok):
    _write(tmp_path / "d" / "b.txt", "bee one\n\nbee two\n")
    _write(tmp_path / "d" / "a.jsonl", '{"text": "ay"}\n')
    _write(tmp_path / "d" / "sub" / "c.txt", "sea\n")
    _write(tmp_path / "d" / "notes.md", "ignored\n")
    source = resolve_text_source(str(tmp_path / "d"))
    assert [p.name for p in source.files] == ["a.jsonl", "b.txt", "c.txt"]
    assert list(source.texts()) == ["ay", "bee one", "bee two", "sea"]
    batches = _all(source, tok, seq_len=3, batch_size=1)
    body = torch.cat([b.input_ids[:, 1:] for b in batches]).reshape(-1).tolist()
    stream = _hand_stream(["ay", "bee one", "bee two", "sea"], tok, sep=EOS)
    assert body == stream[: len(body)] and len(body) == len(stream) // 2 * 2


@pytest.mark.parametrize(
    "content,line,msg",
    [
        ('{"text": "ok"}\n{"text": "broken"\n', 2, "not valid JSON"),
        ('{"text": "ok"}\n\n["a list"]\n', 3, "expected a JSON object"),
        ('{"text": "ok"}\n{"body": "x"}\n', 2, "no 'text' key"),
        ('{"text": null}\n', 1, "not a string"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path, content, line, msg):
    path = _write(tmp_path / "bad.jsonl", content)
    with pytest.raises(UserError, match=msg) as err:
        list(resolve_text_source(str(path)).texts())  # a bad first line fails already here
    assert f"{path}:{line}:" in str(err.value) and "\n" not in str(err.value)


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(b"fine\r\nstill fine\r\n\r\n" + b"more text\n" * 3000 + b"caf\xe9\n")
    source = resolve_text_source(str(path))
    assert next(source.texts()) == "fine\nstill fine"
    with pytest.raises(UserError, match="not valid UTF-8") as err:
        list(source.texts())
    assert f"{path}:3004:" in str(err.value)


def test_missing_empty_and_unsupported_paths(tmp_path):
    with pytest.raises(UserError, match="no such file or dataset"):
        resolve_text_source(str(tmp_path / "missing.jsonl"))
    with pytest.raises(UserError, match="no such file or dataset"):
        resolve_text_source("data/train.txt")  # relative path typo, not a hub id
    with pytest.raises(UserError, match="no such file or dataset"):
        resolve_text_source("not a dataset")
    with pytest.raises(UserError, match="empty"):
        resolve_text_source(str(_write(tmp_path / "empty.txt", "\n  \n")))
    with pytest.raises(UserError, match="empty"):
        resolve_text_source(str(_write(tmp_path / "blank.jsonl", '{"text": " "}\n\n')))
    with pytest.raises(UserError, match=r"first\.jsonl:1: no 'text' key"):
        resolve_text_source(str(_write(tmp_path / "first.jsonl", '{"body": "x"}\n')))
    (tmp_path / "nothing").mkdir()
    _write(tmp_path / "nothing" / "readme.md", "no text files here")
    with pytest.raises(UserError, match="no .txt or .jsonl files"):
        resolve_text_source(str(tmp_path / "nothing"))
    with pytest.raises(UserError, match="unsupported file type"):
        resolve_text_source(str(_write(tmp_path / "data.csv", "a,b\n")))


# ---------------------------------------------------------------------------------------------
# hub datasets


def test_offline_hub_dataset_fails_fast_with_alternatives(monkeypatch):
    import datasets
    import huggingface_hub

    # The libraries read these variables at import time, so set their constants too.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        resolve_text_source("nobody-xyz/no-such-dataset")
    assert time.monotonic() - start < 30
    msg = str(err.value)
    assert "\n" not in msg
    assert "nobody-xyz/no-such-dataset" in msg and "could not be loaded" in msg
    assert "omit `data.dataset`" in msg and ".jsonl" in msg and "folder" in msg


def test_streaming_dataset_texts_and_missing_column(tok):
    import datasets

    rows = {"text": DOCS, "meta": [str(i) for i in range(len(DOCS))]}
    stream = datasets.Dataset.from_dict(rows).to_iterable_dataset()
    source = TextSource(name="local/ds", kind="hf_dataset", split="train", _dataset=stream)
    assert list(source.texts()) == DOCS
    assert list(source.texts()) == DOCS  # iterating again restarts
    assert source.describe() == {
        "name": "local/ds",
        "kind": "hf_dataset",
        "dataset": "local/ds",
        "dataset_config": None,
        "split": "train",
        "text_field": "text",
        "streaming": True,
    }
    body = torch.cat([b.input_ids[:, 1:] for b in _all(source, tok, seq_len=10, batch_size=2)]).reshape(-1)
    assert body.tolist() == _hand_stream(DOCS, tok, sep=EOS)[: body.numel()]
    wrong = TextSource(name="local/ds", kind="hf_dataset", text_field="body", _dataset=stream)
    with pytest.raises(UserError, match="no 'body' column"):
        list(wrong.texts())
