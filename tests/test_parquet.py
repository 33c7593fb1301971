"""Parquet tables (caption tables, embeddings) need pyarrow, the ``parquet`` extra."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from napari_alregions.prototypes import ParquetMissing, load_embeddings, read_caption_table


def test_parquet_tables_read_with_pyarrow(tmp_path):
    pytest.importorskip("pyarrow")
    caps = pd.DataFrame({"image_path": ["a.png", "b.png"], "caption": ["tumour", "normal"]})
    caps.to_parquet(tmp_path / "caps.parquet", engine="pyarrow")
    pd.testing.assert_frame_equal(read_caption_table(tmp_path / "caps.parquet"), caps)
    emb = np.arange(6, dtype=np.float32).reshape(2, 3)
    pd.DataFrame({"embedding": list(emb)}).to_parquet(tmp_path / "emb.parquet", engine="pyarrow")
    np.testing.assert_array_equal(load_embeddings(tmp_path / "emb.parquet"), emb)


def test_without_pyarrow_the_error_names_the_extra(tmp_path, monkeypatch, capsys):
    from napari_alregions.cli import main

    (tmp_path / "x.parquet").write_bytes(b"PAR1 not really")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed: import raises ImportError
    for read in (read_caption_table, load_embeddings):
        with pytest.raises(ParquetMissing, match=r"napari-alregions\[parquet\]"):
            read(tmp_path / "x.parquet")
    assert main(["prototypes", "keyword", str(tmp_path / "x.parquet"), "--with", "tumour", "--out", str(tmp_path / "p.npz")]) == 2
    assert "pip install 'napari-alregions[parquet]'" in capsys.readouterr().err
