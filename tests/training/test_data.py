import pytest
import torch

from training.data import DataError, StreamBatches, WindowBatches, check_long_enough, read_corpus, split


def test_read_corpus_returns_the_text_without_a_byte_order_mark(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("\ufeffПривет\n".encode())
    assert read_corpus(path) == "Привет\n"


@pytest.mark.parametrize(
    "content, problem",
    [(None, "does not exist"), (b"", "is empty"), (b"ok \xff\xfe bad", "not valid UTF-8 \\(byte 3")],
)
def test_read_corpus_refuses_unusable_files(tmp_path, content, problem):
    path = tmp_path / "t.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=problem):
        read_corpus(path)


def test_read_corpus_refuses_a_directory(tmp_path):
    with pytest.raises(DataError, match="not a regular file"):
        read_corpus(tmp_path)


def test_split_is_contiguous_first_train_then_validation():
    ids = torch.arange(100)
    train, val = split(ids, 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))


def test_too_short_splits_are_refused():
    with pytest.raises(DataError, match="validation split has 5 characters"):
        check_long_enough("validation", torch.arange(5), seq_len=8)


def test_window_targets_are_the_next_characters_and_seeded():
    data = torch.arange(1000)
    x, y = WindowBatches(data, 4, 16, seed=3).next()
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(y, x + 1)
    again, _ = WindowBatches(data, 4, 16, seed=3).next()
    assert torch.equal(x, again)


def test_streams_continue_each_row_and_restart_after_a_pass():
    data = torch.arange(1001)
    batches = StreamBatches(data, batch_size=2, seq_len=100)  # 500 per stream: 5 chunks per pass
    first_x, first_y = batches.next()
    assert not batches.continues
    assert first_x[:, 0].tolist() == [0, 500] and torch.equal(first_y, first_x + 1)
    second_x, _ = batches.next()
    assert batches.continues and torch.equal(second_x, first_x + 100)
    for _ in range(3):
        batches.next()
    again, _ = batches.next()
    assert not batches.continues and torch.equal(again, first_x)


def test_stream_shards_read_disjoint_streams():
    data = torch.arange(4001)
    rank0 = StreamBatches(data, 2, 10, shard=0, n_shards=2).next()[0]
    rank1 = StreamBatches(data, 2, 10, shard=1, n_shards=2).next()[0]
    assert rank0[:, 0].tolist() == [0, 1000] and rank1[:, 0].tolist() == [2000, 3000]


def test_streams_need_enough_text():
    with pytest.raises(DataError, match="too short"):
        StreamBatches(torch.arange(50), batch_size=8, seq_len=10)


def test_stream_position_survives_a_state_round_trip():
    data = torch.arange(1001)
    a = StreamBatches(data, 2, 100)
    a.next()
    a.next()
    b = StreamBatches(data, 2, 100)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.next()[0], b.next()[0])
