"""Tier 1: PairEncoder ids equal AutoTokenizer's, query cutting, empty passages, chunk windows."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
from conftest import LONG_PASSAGE, MULTILINGUAL_PAIRS, REPO_ROOT

from reranker.errors import PayloadTooLargeError
from reranker.messages import TOKEN_DTYPE, PairRequest
from reranker.tokenization import PairEncoder
from reranker.model_files import load_tokenizer


@pytest.fixture(scope="module")
def auto_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def encoder(tiny_tokenizer):
    return PairEncoder(tiny_tokenizer, max_length=512, max_query_tokens=256)


def pair(encoded, i=0):
    start, length = int(encoded.offsets[i]), int(encoded.lengths[i])
    return (
        encoded.input_ids[start: start + length].tolist(),
        encoded.token_type_ids[start: start + length].tolist(),
    )


@pytest.mark.parametrize("max_length", [512, 32])
@pytest.mark.parametrize("query,passage", MULTILINGUAL_PAIRS)
def test_ids_equal_auto_tokenizer(auto_tokenizer, tiny_tokenizer, query, passage, max_length):
    encoder = PairEncoder(tiny_tokenizer, max_length=max_length, max_query_tokens=min(256, max_length - 4))
    ids, types = pair(encoder.encode(query, [passage]))
    batched = auto_tokenizer([query], [passage], truncation="only_second", max_length=max_length)
    assert ids == batched["input_ids"][0]
    assert types == batched["token_type_ids"][0]
    if passage:  # the single-pair call equals the batched one except for "" (see test_empty_passage)
        single = auto_tokenizer(query, passage, truncation="only_second", max_length=max_length)
        assert ids == single["input_ids"] and types == single["token_type_ids"]
    assert len(ids) <= max_length


def test_long_passage_is_truncated_to_max_length(encoder):
    encoded = encoder.encode("the lazy dog", [LONG_PASSAGE])
    assert encoded.lengths.tolist() == [512]


def test_truncation_and_padding_set_on_the_tokenizer_do_not_apply(encoder, tiny_model_dir):
    # tokenizer.json may carry both (many hub models do), and a transformers call with
    # truncation=True leaves it set on the shared Rust tokenizer: the encoder must still see every
    # token of a passage, to cut it (or chunk it) itself.
    tokenizer = load_tokenizer(str(tiny_model_dir))
    tokenizer.backend_tokenizer.enable_truncation(16)
    tokenizer.backend_tokenizer.enable_padding(length=600)
    own = PairEncoder(tokenizer, max_length=512, max_query_tokens=256)
    tokenizer.backend_tokenizer.enable_truncation(8)  # set again after the encoder was made
    for request in (PairRequest(queries=["the lazy dog"], passages=[LONG_PASSAGE, "paris"]),
                    PairRequest(queries=["the lazy dog"], passages=[LONG_PASSAGE], chunk=True, max_chunks=4)):
        got, expected = own.encode_request(request), encoder.encode_request(request)
        assert got.lengths.tolist() == expected.lengths.tolist() and got.lengths[0] == 512
        assert got.input_ids.tolist() == expected.input_ids.tolist()


def test_empty_passage_is_an_empty_second_segment(encoder, auto_tokenizer, tiny_tokenizer):
    query = "what is the capital of france"
    q_ids = tiny_tokenizer(query, add_special_tokens=False)["input_ids"]
    cls, sep = tiny_tokenizer.cls_token_id, tiny_tokenizer.sep_token_id
    expected_ids = [cls, *q_ids, sep, sep]
    expected_types = [0] * (len(q_ids) + 2) + [1]
    batched = auto_tokenizer([query], [""])
    assert batched["input_ids"][0] == expected_ids
    for passages, position in ((["" ], 0), (["paris", "", LONG_PASSAGE], 1), (["", ""], 1)):
        encoded = encoder.encode(query, passages)
        assert pair(encoded, position) == (expected_ids, expected_types)
    chunked = encoder.encode(query, ["paris", ""], chunk=True, max_chunks=10)
    assert pair(chunked, 1) == (expected_ids, expected_types)


def test_encoded_arrays_are_int32_and_pickle(encoder):
    encoded = encoder.encode("what is the capital of france", ["paris", "", LONG_PASSAGE])
    assert encoded.input_ids.dtype == TOKEN_DTYPE == np.int32
    assert encoded.lengths.dtype == np.int32 and encoded.doc_index.dtype == np.int32
    copy = pickle.loads(pickle.dumps(encoded))
    assert np.array_equal(copy.input_ids, encoded.input_ids) and copy.input_ids.dtype == np.int32


def test_encode_many_matches_one_request_at_a_time(encoder):
    requests = [
        PairRequest(queries=["paris"], passages=["paris is the capital", "", "berlin"]),
        PairRequest(queries=["москва", "東京"], passages=["столица россии москва", "東京は日本の首都です"],
                    query_of_passage=[0, 1]),
        PairRequest(queries=["dog"], passages=[LONG_PASSAGE], chunk=True, max_chunks=3),
    ]
    together = encoder.encode_many(requests)
    for request, encoded in zip(requests, together):
        alone = encoder.encode_request(request)
        assert np.array_equal(encoded.input_ids, alone.input_ids)
        assert np.array_equal(encoded.doc_index, alone.doc_index)
    # The second request pairs its second passage with its second query.
    ids, _ = pair(together[1], 1)
    assert ids[: 3] == [encoder.cls_id, *encoder.tokenizer("東京", add_special_tokens=False)["input_ids"][:2]]


# ----- query cutting ------------------------------------------------------------------------------


@pytest.mark.parametrize("query_tokens,cut", [(6, False), (508, False), (509, True), (600, True)])
def test_query_is_cut_only_when_no_passage_token_fits(encoder, query_tokens, cut):
    query = " ".join(["fox"] * query_tokens)
    encoded = encoder.encode(query, ["paris is the capital"])
    assert encoded.query_truncated is cut
    ids, types = pair(encoded)
    query_len = types.index(1) - 2  # [CLS] query [SEP], then the passage
    assert query_len == (encoder.max_query_tokens if cut else query_tokens)
    assert len(ids) <= encoder.max_length


def test_left_truncation_keeps_the_tail_and_strict_mode_refuses(encoder, tiny_tokenizer):
    passage_ids = tiny_tokenizer(LONG_PASSAGE, add_special_tokens=False)["input_ids"]
    ids, _ = pair(encoder.encode("dog", [LONG_PASSAGE], truncation_direction="left"))
    budget = 512 - 1 - 3
    assert ids[3:-1] == passage_ids[-budget:]
    with pytest.raises(PayloadTooLargeError, match="truncate=true"):
        encoder.encode("dog", ["paris", LONG_PASSAGE], truncate=False)


# ----- chunk windows ------------------------------------------------------------------------------


def windows_of(encoded, doc):
    return [pair(encoded, i)[0] for i in np.flatnonzero(encoded.doc_index == doc)]


def test_windows_cover_the_passage_and_the_last_ends_at_its_end(encoder, tiny_tokenizer):
    passage_ids = tiny_tokenizer(LONG_PASSAGE, add_special_tokens=False)["input_ids"]  # 720 tokens
    encoded = encoder.encode("dog", ["paris", LONG_PASSAGE], chunk=True, max_chunks=10)
    assert encoded.chunks_per_doc().tolist() == [1, 2]
    budget = 512 - 1 - 3
    first, last = (w[3:-1] for w in windows_of(encoded, 1))
    assert first == passage_ids[:budget]
    assert last == passage_ids[-budget:]
    assert all(len(w) <= 512 for w in windows_of(encoded, 1))


def test_max_chunks_bounds_the_windows(encoder):
    long = LONG_PASSAGE * 4  # 2880 tokens: 6 windows of 508 with overlap 32
    assert encoder.encode("dog", [long], chunk=True, max_chunks=10).num_pairs == 6
    assert encoder.encode("dog", [long], chunk=True, max_chunks=2).num_pairs == 2
    assert encoder.encode("dog", [long], chunk=True, max_chunks=1).num_pairs == 1


def test_max_tokens_per_doc_truncates_before_windowing(encoder, tiny_tokenizer):
    passage_ids = tiny_tokenizer(LONG_PASSAGE, add_special_tokens=False)["input_ids"]
    encoded = encoder.encode("dog", [LONG_PASSAGE], chunk=True, max_chunks=10, max_tokens_per_doc=600)
    windows = [w[3:-1] for w in windows_of(encoded, 0)]
    assert len(windows) == 2
    assert windows[-1] == passage_ids[600 - 508: 600]
    short = encoder.encode("dog", [LONG_PASSAGE], chunk=True, max_chunks=10, max_tokens_per_doc=100)
    assert short.num_pairs == 1 and short.lengths.tolist() == [1 + 1 + 1 + 100 + 1]


@pytest.mark.parametrize("overlap,expected", [(0, 0), (32, 32), (10_000, 254)])
def test_windows_overlap(tiny_tokenizer, overlap, expected):
    encoder = PairEncoder(tiny_tokenizer, 512, 256, chunk_overlap_tokens=overlap)
    passage = list(range(3000))
    windows = encoder.windows(passage, budget=508, max_chunks=100)
    for current, following in zip(windows[:-2], windows[1:-1]):
        assert current[-expected:] == following[:expected] if expected else current[-1] + 1 == following[0]
    assert windows[-1][-1] == passage[-1] and all(len(w) == 508 for w in windows)
    assert sorted(set().union(*map(set, windows))) == passage


def test_load_tokenizer_does_not_import_torch(tiny_model_dir):
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(REPO_ROOT)!r})\n"
        "from reranker.tokenization import PairEncoder\nfrom reranker.model_files import load_tokenizer, read_model_config\n"
        f"tok = load_tokenizer({str(tiny_model_dir)!r})\n"
        f"read_model_config({str(tiny_model_dir)!r})\n"
        "encoded = PairEncoder(tok, 512, 256).encode('что такое 東京', ['paris', ''], chunk=True, max_chunks=3)\n"
        "assert encoded.num_pairs == 2\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_load_tokenizer_gives_the_fast_tokenizer(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert tokenizer.is_fast and tokenizer.cls_token_id is not None
