"""Small readers of the extract's Parquet folders, and the model output file names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import scipy.sparse as sp

MODEL_FILE = "model.npz"  # vectors/factors, id arrays and the published lists
PARAMS_FILE = "params.json"


def read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """`columns` of a Parquet file or folder. A column it lacks (a folder written by an older
    release, read by a retried task after an upgrade) is named, with the way out."""
    if columns is not None:
        have = set(pq.ParquetDataset(str(path)).schema.names)
        missing = [c for c in columns if c not in have]
        if missing:
            raise ValueError(f"{path} has no column {', '.join(missing)}: probably written "
                             "by an older release; run the task that writes it again (in "
                             "Airflow: clear it and the tasks after it)")
    return pq.read_table(str(path), columns=columns).to_pandas()


def index_of(ids: np.ndarray) -> dict[str, int]:
    return {item: i for i, item in enumerate(ids.tolist())}


def seen_matrix(interactions: pd.DataFrame, user_index: dict[str, int],
                item_index: dict[str, int], value_col: str | None = None) -> sp.csr_matrix:
    """users x items CSR of interactions (1.0, or `value_col`); unknown ids are skipped."""
    rows = interactions["user_id"].map(user_index)
    cols = interactions["item_id"].map(item_index)
    ok = rows.notna() & cols.notna()
    values = (interactions.loc[ok, value_col].to_numpy(np.float32) if value_col
              else np.ones(int(ok.sum()), np.float32))
    return sp.csr_matrix(
        (values, (rows[ok].to_numpy(np.int64), cols[ok].to_numpy(np.int64))),
        shape=(len(user_index), len(item_index)), dtype=np.float32)
