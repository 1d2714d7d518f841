"""SASRec (Kang & McAuley 2018): a self-attentive next-item model over each user's sequence.

Each user's sequence is their distinct items ordered by when they last touched them (the
extract's interactions: `last_ts`, timestamp ties by `last_event_id`, as `reco.event_order`
orders events). The model is trained to predict item t+1 from items ..t at every position,
with a full-softmax cross-entropy over the catalogue (better than the paper's sampled binary
loss on catalogues of thousands of items; its cost grows with the catalogue, so very large
ones would want a sampled softmax). It publishes, per user, the `candidates` unseen items
most likely to come next and their probabilities, softmax(logits / temperature): the API
blends them as the `seq` signal.

The pipeline trains it once, on the window without each user's held-out last item (the
evaluated model), and serves that network applied to the whole window's sequences
(`warm_start`) after `refit_epochs` more epochs on them at `refit_learning_rate`: a sequence
model reads each user's latest items at inference, so a second full training for one more item
per user would double the cost for little, while the short refit still learns from those
latest items.

engine "local" only: JAX on the CPU (Spark ML has no sequence model). Imported lazily, so
the rest of the pipeline does not pay for JAX.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd

from reco.event_order import sort_events
from spark_jobs.files import MODEL_FILE, read_parquet
from spark_jobs.hyperparameters import Hyperparameters

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_ARRAYS = ("user_ids", "item_ids", "cand_idx", "cand_scores")
_NET = "net."  # prefix of the network's weights in the saved file


@dataclass(frozen=True)
class SASRecParams(Hyperparameters):
    MODEL: ClassVar[str] = "sasrec"

    # Chosen on MovieLens-100k validation (benchmarks/reports/sasrec_experiment.md): 20
    # epochs over every sequence's windows in batches of 64 (alone HR@10 0.195-0.205) take
    # the time of the 50 epochs over each sequence's last 51 items in batches of 128 (alone
    # 0.173-0.18) they replaced; 200 of those at 1e-3 (0.191) took four times as long.
    dim: int = 64
    max_len: int = 50
    blocks: int = 2
    epochs: int = 20
    dropout: float = 0.5
    learning_rate: float = 4e-3
    batch: int = 64
    temperature: float = 2.0
    refit_epochs: int = 2  # the served model: epochs on top of the evaluated network
    # ... at a quarter of the training's rate: a fresh optimiser at 4e-3 shook the trained
    # network (one level down on MovieLens validation, seeds 0 / 1: HR@10 0.190 / 0.193 after
    # a refit at 4e-3, 0.200 / 0.203 at 1e-3; benchmarks/reports/sasrec_refit.md).
    refit_learning_rate: float = 1e-3
    seed: int = 0
    candidates: int = 100


@dataclass
class SASRecModel:
    user_ids: np.ndarray
    item_ids: np.ndarray
    cand_idx: np.ndarray  # int32 [users, k] item indices, most likely next first, seen excluded
    cand_scores: np.ndarray  # their probabilities (softmax over unseen items / temperature)
    net: dict[str, np.ndarray]  # the network's weights, flattened (see `flatten`)
    # This fit's mean training loss per epoch (the refit's when warm-started), for MLflow;
    # not saved: a record of the training, not part of the model.
    train_loss: list[float] = field(default_factory=list)

    def save(self, out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / MODEL_FILE
        np.savez(path, **{name: getattr(self, name) for name in _ARRAYS},
                 **{_NET + name: value for name, value in self.net.items()})
        return path

    @classmethod
    def load(cls, out_dir: Path) -> SASRecModel:
        with np.load(out_dir / MODEL_FILE) as data:
            net = {name[len(_NET):]: data[name] for name in data.files if name.startswith(_NET)}
            return cls(**{name: data[name] for name in _ARRAYS}, net=net)


def flatten(params: dict) -> dict[str, np.ndarray]:
    """The weight tree as flat numpy arrays ("blocks.0.q", ...), to save alongside the lists."""
    flat = {name: np.asarray(value) for name, value in params.items() if name != "blocks"}
    for b, block in enumerate(params["blocks"]):
        flat.update({f"blocks.{b}.{name}": np.asarray(value) for name, value in block.items()})
    return flat


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    params: dict = {name: value for name, value in flat.items() if not name.startswith("blocks.")}
    blocks: dict[int, dict] = {}
    for name, value in flat.items():
        if name.startswith("blocks."):
            _, b, weight = name.split(".")
            blocks.setdefault(int(b), {})[weight] = value
    params["blocks"] = [blocks[b] for b in sorted(blocks)]
    return params


# ---------------------------------------------------------------- the network

def _layer_norm(x, gain, bias):
    import jax.numpy as jnp

    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + 1e-8) * gain + bias


def init_params(key, n_items: int, dim: int, max_len: int, blocks: int) -> dict:
    """Weights for item codes 1..n_items (0 is padding)."""
    import jax
    import jax.numpy as jnp

    keys = iter(jax.random.split(key, 2 + 5 * blocks))
    scale = 1 / math.sqrt(dim)

    def matrix(*shape):
        return jax.random.normal(next(keys), shape) * scale

    ones, zeros = jnp.ones(dim), jnp.zeros(dim)
    return {"item": matrix(n_items + 1, dim), "pos": matrix(max_len, dim),
            "out_gain": ones, "out_bias": zeros,
            "blocks": [{"q": matrix(dim, dim), "k": matrix(dim, dim), "v": matrix(dim, dim),
                        "ff1": matrix(dim, dim), "ff2": matrix(dim, dim), "b1": zeros,
                        "b2": zeros, "g_att": ones, "c_att": zeros, "g_ff": ones,
                        "c_ff": zeros} for _ in range(blocks)]}


def encode(params: dict, seq, key, dropout: float):
    """Hidden state at every position of left-padded item sequences (0 = padding); `key`
    None = inference (no dropout)."""
    import jax
    import jax.numpy as jnp

    _, length = seq.shape
    dim = params["item"].shape[1]
    pad_mask = (seq > 0)[..., None]
    keys = iter(jax.random.split(key, 1 + 3 * len(params["blocks"]))) if key is not None else None

    def drop(x):
        if keys is None or dropout == 0:
            return x
        keep = jax.random.bernoulli(next(keys), 1 - dropout, x.shape)
        return jnp.where(keep, x / (1 - dropout), 0)

    x = drop(params["item"][seq] * math.sqrt(dim) + params["pos"][None]) * pad_mask
    # Each position attends to itself and earlier items, never to the left padding.
    visible = jnp.tril(jnp.ones((length, length), bool))[None] & (seq > 0)[:, None, :]
    for b in params["blocks"]:
        q = _layer_norm(x, b["g_att"], b["c_att"])
        att = jnp.einsum("bld,bmd->blm", q @ b["q"], x @ b["k"]) / math.sqrt(dim)
        att = drop(jax.nn.softmax(jnp.where(visible, att, -1e9), -1))
        x = q + att @ (x @ b["v"])
        y = _layer_norm(x, b["g_ff"], b["c_ff"])
        y = drop(jax.nn.relu(y @ b["ff1"] + b["b1"])) @ b["ff2"] + b["b2"]
        x = (x + drop(y)) * pad_mask
    return _layer_norm(x, params["out_gain"], params["out_bias"])


def left_padded(seqs: list[list[int]], length: int) -> np.ndarray:
    """The last `length` items of each sequence, right-aligned, 0 before them."""
    out = np.zeros((len(seqs), length), np.int32)
    for r, s in enumerate(seqs):
        tail = s[-length:]
        out[r, length - len(tail):] = tail
    return out


def training_windows(seqs: list[list[int]], max_len: int) -> list[list[int]]:
    """Each sequence cut, from its end, into windows of max_len + 1 items that overlap by one,
    so every item after a sequence's first is a training target exactly once per epoch."""
    windows = []
    for s in seqs:
        for end in range(len(s), 1, -max_len):
            windows.append(s[max(0, end - max_len - 1):end])
    return windows


def train(seqs: list[list[int]], n_items: int, p: SASRecParams,
          progress: Callable[[int, float], None] | None = None, init: dict | None = None
          ) -> dict:
    """Next-item training at every position of every sequence (`training_windows`); `seqs`
    hold item codes 1..n_items. Starts from `init` weights if given; `progress(epoch, loss)`
    after each epoch, with the epoch's mean batch loss."""
    import jax
    import optax

    # Only each sequence's last max_len + 1 items (the paper's rows) leave the older items of
    # long histories unlearnt: on MovieLens-100k the windows give 2.5x the training
    # positions, and HR@10 alone 0.18 -> 0.19-0.20 on validation in the same training time.
    windows = training_windows(seqs, p.max_len)
    inputs = left_padded([w[:-1] for w in windows], p.max_len)  # item t predicts item t + 1
    targets = left_padded([w[1:] for w in windows], p.max_len)
    key = jax.random.PRNGKey(p.seed)
    params = init if init is not None else init_params(key, n_items, p.dim, p.max_len,
                                                        p.blocks)
    opt = optax.adam(p.learning_rate, b2=0.98)
    state = opt.init(params)

    def loss(w, x, y, k):
        logits = encode(w, x, k, p.dropout) @ w["item"].T
        logits = logits.at[..., 0].set(-1e9)  # never predict padding
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        mask = y > 0
        return (ce * mask).sum() / jax.numpy.maximum(mask.sum(), 1)

    @jax.jit
    def step(w, s, x, y, k):
        value, grads = jax.value_and_grad(loss)(w, x, y, k)
        updates, s = opt.update(grads, s, w)
        return optax.apply_updates(w, updates), s, value

    rng = np.random.default_rng(p.seed)
    for epoch in range(p.epochs):
        total = 0.0
        order = rng.permutation(len(inputs))
        for at in range(0, len(inputs), p.batch):
            rows = order[at:at + p.batch]
            key, k = jax.random.split(key)
            params, state, value = step(params, state, inputs[rows], targets[rows], k)
            total += float(value)
        if progress is not None and len(inputs):  # no windows: nothing learnt, no mean
            progress(epoch, total / math.ceil(len(inputs) / p.batch))
    return params


def refit(weights: dict, seqs: list[list[int]], n_items: int, p: SASRecParams,
          progress: Callable[[int, float], None] | None = None) -> dict:
    """The served network: `weights` after p.refit_epochs more epochs at p.refit_learning_rate
    (a fresh optimiser; none when p.refit_epochs or the rate is 0: the weights would not move,
    and a learning rate of 0 is out of `train`'s range)."""
    if not p.refit_epochs or not p.refit_learning_rate:
        return weights
    return train(seqs, n_items, replace(p, epochs=p.refit_epochs,
                                        learning_rate=p.refit_learning_rate), progress, weights)


@functools.cache
def _last_position_logits():
    """The jitted inference function, built once (a new jax.jit per call compiles again)."""
    import jax

    return jax.jit(lambda w, x: encode(w, x, None, 0.0)[:, -1] @ w["item"].T)


def next_item_logits(params: dict, seqs: list[list[int]], max_len: int,
                     batch: int = 256) -> np.ndarray:
    """(users, n_items + 1) next-item logits after each whole sequence (column 0: padding)."""
    last = _last_position_logits()
    x = left_padded(seqs, max_len)
    return np.concatenate([np.asarray(last(params, x[i:i + batch]))
                           for i in range(0, len(x), batch)]) if len(x) else np.zeros((0, 0))


def next_item_probabilities(logits: np.ndarray, seen: list[np.ndarray],
                            temperature: float) -> np.ndarray:
    """softmax(logits / temperature) over each user's unseen items (seen and padding: 0)."""
    z = logits.astype(np.float64) / temperature
    z[:, 0] = -np.inf
    for r, codes in enumerate(seen):
        z[r, codes] = -np.inf
    # A user who has seen every item gets a row of NaN: no candidates (top_candidates).
    with np.errstate(invalid="ignore"):
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------- the pipeline's model

def user_sequences(interactions: pd.DataFrame, item_ids: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """(user ids, item ids, each user's item codes 1..n by last touch in event order): from the
    extract's interactions (one row per user and item, `last_ts`, `last_event_id`). With
    `item_ids` (a trained model's vocabulary), items outside it are left out."""
    if item_ids is None:
        item_ids = np.asarray(sorted(interactions["item_id"].unique()), dtype=str)
    code = pd.Index(item_ids).get_indexer(interactions["item_id"]) + 1
    frame = pd.DataFrame({"user_id": interactions["user_id"].to_numpy(str), "code": code,
                          "ts": interactions["last_ts"].to_numpy(np.float64),
                          "tie": interactions["last_event_id"].to_numpy(str)})
    frame = sort_events(frame[frame["code"] > 0], "ts", user_col="user_id", tie_col="tie")
    by_user = frame.groupby("user_id", sort=True)["code"].agg(list)
    return by_user.index.to_numpy(str), item_ids, [list(map(int, s)) for s in by_user]


def top_candidates(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k most likely item indices (0-based, padding dropped) and probabilities;
    rows with fewer than k unseen items end in probability-0 entries marked -inf."""
    p = probabilities[:, 1:]
    k = min(k, p.shape[1])
    part = np.argpartition(-p, k - 1, axis=1)[:, :k]
    part_p = np.take_along_axis(p, part, axis=1)
    order = np.argsort(-part_p, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1).astype(np.int32)
    scores = np.take_along_axis(part_p, order, axis=1).astype(np.float32)
    return idx, np.where(scores > 0, scores, -np.inf).astype(np.float32)


def fit(interactions_dir: Path, params: SASRecParams, engine: str = "local",
        spark: SparkSession | None = None, timings: dict | None = None,
        warm_start: Path | None = None) -> SASRecModel:
    """Train on the extract's interactions (or, with `warm_start`, start from the network saved
    there and refit it `refit_epochs`); candidates exclude each user's seen items. Items the
    warm-started network does not know (seen only in the window's last events) are left out
    of the sequences: they wait for the next training to be learnt and recommended."""
    timings = timings if timings is not None else {}
    if engine != "local":
        raise ValueError(f"sasrec has no {engine!r} engine: it trains with JAX ('local')")
    frame = read_parquet(interactions_dir, ["user_id", "item_id", "last_ts", "last_event_id"])
    if frame.empty:
        raise ValueError("no interactions in the window: nothing to train on")
    started = time.perf_counter()
    losses: list[float] = []

    def record(_epoch: int, loss: float) -> None:
        losses.append(loss)

    if warm_start is None:
        user_ids, item_ids, seqs = user_sequences(frame)
        weights = train(seqs, len(item_ids), params, record)
    else:
        trained = SASRecModel.load(warm_start)
        user_ids, item_ids, seqs = user_sequences(frame, trained.item_ids)
        if not seqs:
            raise ValueError("no interactions with items the trained network knows")
        weights = unflatten(trained.net)
        weights = refit(weights, seqs, len(item_ids), params, record)
    timings["train_s"] = time.perf_counter() - started
    started = time.perf_counter()
    idx_parts, score_parts = [], []
    # Bounded memory: a chunk holds users x catalogue float64 (256 x 100,000 items: 200 MB).
    for lo in range(0, len(seqs), 256):
        chunk = seqs[lo:lo + 256]
        logits = next_item_logits(weights, chunk, params.max_len)
        probs = next_item_probabilities(logits, [np.asarray(s) for s in chunk],
                                        params.temperature)
        idx, scores = top_candidates(probs, params.candidates)
        idx_parts.append(idx)
        score_parts.append(scores)
    timings["neighbours_s"] = time.perf_counter() - started
    return SASRecModel(user_ids, item_ids, np.concatenate(idx_parts),
                       np.concatenate(score_parts), flatten(weights), losses)

