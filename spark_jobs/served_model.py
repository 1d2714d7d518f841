"""A trained version as an MLflow model: the lists it publishes to Redis, for notebooks.

    model = mlflow.pyfunc.load_model("models:/als@champion")
    model.predict(pd.DataFrame({"user_id": ["42"]}), params={"k": 5})

answers what Redis serves for that version, one row per (query, item), best first. This file
is an MLflow "model from code": MLflow copies it into the model and runs it when loading, so it
imports nothing of this project (numpy, pandas and mlflow only).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

FOLDER = "model"  # the artifact: the trained version's folder (model.npz, params.json)
# Query column -> (owner ids, item indices, scores) arrays of model.npz, as spark_jobs.publish
# reads them: item-item lists for item ids, users' candidate lists for user ids.
QUERIES = {"item_id": ("item_ids", "nbr_idx", "nbr_scores"),
           "user_id": ("user_ids", "cand_idx", "cand_scores")}
OUTPUT = ["query", "item_id", "score", "rank"]
DEFAULT_K = 10


class PublishedLists(PythonModel):
    def load_context(self, context) -> None:
        with np.load(Path(context.artifacts[FOLDER]) / "model.npz") as data:
            names = set(data.files)
            self.items = data["item_ids"].astype(str)
            # Only the lists the version has: item2vec no users', SASRec no item-item ones.
            self.lists = {
                column: ({owner: row for row, owner in enumerate(data[ids].astype(str))},
                         data[idx], data[scores])
                for column, (ids, idx, scores) in QUERIES.items()
                if {ids, idx, scores} <= names}

    def predict(self, context, model_input: pd.DataFrame,
                params: dict | None = None) -> pd.DataFrame:
        column = query_column(model_input, self.lists)
        k = int((params or {}).get("k", DEFAULT_K))
        if k < 1:
            raise ValueError(f"k: must be at least 1, got {k}")
        owners, idx, scores = self.lists[column]
        rows = []
        for query in model_input[column].astype(str):
            row = owners.get(query)
            if row is None:  # unknown to this version: no rows, as Redis has no list
                continue
            kept = np.flatnonzero(np.isfinite(scores[row]))[:k]  # publish drops padding
            rows += [(query, self.items[idx[row][j]], float(scores[row][j]), rank)
                     for rank, j in enumerate(kept, start=1)]
        return pd.DataFrame(rows, columns=OUTPUT)


def query_column(model_input: pd.DataFrame, lists: dict) -> str:
    given = [column for column in QUERIES if column in model_input.columns]
    if len(given) != 1:
        raise ValueError(f"input: expected one column of {' or '.join(QUERIES)}, got "
                         f"{list(model_input.columns)}")
    if given[0] not in lists:
        raise ValueError(f"{given[0]}: this model has no lists by {given[0]}; it has lists by "
                         f"{' and '.join(lists)}")
    return given[0]


mlflow.models.set_model(PublishedLists())
