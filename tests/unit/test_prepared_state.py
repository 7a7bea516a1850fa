"""``state.h5`` read back as written: arrays (numbers and UTF-8 strings), attributes in order; a
file of another format or version is refused naming the file."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from twinhpc.errors import TwinError
from twinhpc.io.prepared_state import (
    STATE,
    STATE_VERSION,
    read_prepared_state,
    write_prepared_state,
)


def write_example(path):
    arrays = {"terms": np.array(["film", "café", "日本"], dtype=object), "idf": np.array([1.5, 2.0, 0.25])}
    write_prepared_state(path, "tfidf", arrays, {"field": "text", "width": 3}, {"fingerprint": "abc", "label": ""})
    return arrays


def test_arrays_and_attributes_read_back(tmp_path):
    arrays = write_example(tmp_path / STATE)
    back, attrs = read_prepared_state(tmp_path / STATE)
    assert list(back) == ["terms", "idf"]
    assert back["terms"].dtype == object and back["terms"].tolist() == ["film", "café", "日本"]
    assert back["idf"].dtype == np.float64 and back["idf"].tolist() == arrays["idf"].tolist()
    assert attrs == {
        "format": "twinhpc-preprocess-state",
        "version": STATE_VERSION,
        "kind": "tfidf",
        "settings": '{"field": "text", "width": 3}',
        "fingerprint": "abc",
        "label": "",
    }
    assert list(attrs) == ["format", "version", "kind", "settings", "fingerprint", "label"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE]


@pytest.mark.parametrize(
    "attr, value, match",
    [
        ("version", STATE_VERSION + 1, f"state version {STATE_VERSION + 1} is not supported"),
        ("format", "twinhpc-results", "not a twinhpc preprocessing state"),
    ],
)
def test_another_format_or_version_is_refused(tmp_path, attr, value, match):
    write_example(tmp_path / STATE)
    with h5py.File(tmp_path / STATE, "r+") as f:
        f.attrs[attr] = value
    with pytest.raises(TwinError, match=rf"{tmp_path / STATE}: {match}"):
        read_prepared_state(tmp_path / STATE)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(TwinError, match=rf"{tmp_path / STATE}: unreadable preprocessing state"):
        read_prepared_state(tmp_path / STATE)
