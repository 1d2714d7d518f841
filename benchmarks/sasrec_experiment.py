"""Experiment 7 (issue 6): does a sequential model (SASRec) add to the served blend?

MovieLens-100k VALIDATION only, the protocol of `tune_quality.py` (temporal leave-last-out, full
ranking over every item the user has seen, k=10), the tuned configuration of
benchmarks/reports/tuning.json. Nothing here touches the test split.

SASRec (Kang & McAuley 2018, self-attentive next-item model) is trained on each user's known
sequence with a full-softmax cross-entropy loss over all items (which works better than the
paper's sampled binary loss on small catalogues). It is scored alone, and fused with the blend:
    fused = blend / max(blend) + w * p / max(p),   p = softmax(SASRec logits / temperature)
over the blend's top 300 and every other unseen item.

It is an experiment, not a served signal: it needs JAX (`pip install -e '.[experiments]'`) and
no Spark engine exists for it. Run (about 25 minutes on 2 busy cores):
    .venv/bin/python benchmarks/sasrec_experiment.py [--epochs 200] [--dropout 0.5]
Writes benchmarks/reports/sasrec_experiment.md.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import tune_quality as tq  # noqa: E402

from reco.evaluation_split import ndcg_at_k  # noqa: E402
from reco.ranking import rank  # noqa: E402
from reco.rules import Filters  # noqa: E402

REPORT = ROOT / "benchmarks" / "reports" / "sasrec_experiment.md"
BLEND_TOP = 300


# ---------------------------------------------------------------- model

def _layer_norm(x, gain, bias):
    import jax.numpy as jnp
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + 1e-8) * gain + bias


def _init(key, n_items: int, dim: int, max_len: int, blocks: int) -> dict:
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


def _encode(params: dict, seq, key, dropout: float):
    """Hidden state at every position of left-padded item sequences (0 = padding)."""
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
    causal = jnp.tril(jnp.ones((length, length), bool))
    for b in params["blocks"]:
        q = _layer_norm(x, b["g_att"], b["c_att"])
        att = jnp.einsum("bld,bmd->blm", q @ b["q"], x @ b["k"]) / math.sqrt(dim)
        att = drop(jax.nn.softmax(jnp.where(causal[None], att, -1e9), -1))
        x = q + att @ (x @ b["v"])
        y = _layer_norm(x, b["g_ff"], b["c_ff"])
        y = drop(jax.nn.relu(y @ b["ff1"] + b["b1"])) @ b["ff2"] + b["b2"]
        x = (x + drop(y)) * pad_mask
    return _layer_norm(x, params["out_gain"], params["out_bias"])


def _left_padded(seqs: list[list[int]], length: int) -> np.ndarray:
    """The last `length` items of each sequence, right-aligned, 0 before them."""
    out = np.zeros((len(seqs), length), np.int32)
    for r, s in enumerate(seqs):
        tail = s[-length:]
        out[r, length - len(tail):] = tail
    return out


def fit_sasrec(seqs: list[list[int]], n_items: int, *, dim: int = 64, max_len: int = 50,
               blocks: int = 2, epochs: int = 200, dropout: float = 0.5, lr: float = 1e-3,
               batch: int = 128, seed: int = 0) -> dict:
    """Next-item training at every position of each sequence (its last max_len + 1 items)."""
    import jax
    import optax
    inputs = _left_padded([s[:-1] for s in seqs], max_len)  # item t predicts item t + 1
    targets = _left_padded([s[1:] for s in seqs], max_len)
    key = jax.random.PRNGKey(seed)
    params = _init(key, n_items, dim, max_len, blocks)
    opt = optax.adam(lr, b2=0.98)
    state = opt.init(params)

    def loss(p, x, y, k):
        logits = _encode(p, x, k, dropout) @ p["item"].T
        logits = logits.at[..., 0].set(-1e9)  # never predict padding
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        mask = y > 0
        return (ce * mask).sum() / mask.sum()

    @jax.jit
    def step(p, s, x, y, k):
        value, grads = jax.value_and_grad(loss)(p, x, y, k)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    rng = np.random.default_rng(seed)
    started = time.time()
    for epoch in range(epochs):
        total = 0.0
        order = rng.permutation(len(seqs))
        for at in range(0, len(seqs), batch):
            rows = order[at:at + batch]
            key, k = jax.random.split(key)
            params, state, value = step(params, state, inputs[rows], targets[rows], k)
            total += float(value)
        if epoch % 25 == 0 or epoch == epochs - 1:
            print(f"  epoch {epoch:3d} loss {total:7.2f} ({time.time() - started:.0f}s)",
                  flush=True)
    return params


def sasrec_logits(params: dict, seqs: list[list[int]], max_len: int = 50) -> np.ndarray:
    """(users, n_items + 1) next-item logits after each whole sequence."""
    import jax
    last = jax.jit(lambda p, x: _encode(p, x, None, 0.0)[:, -1] @ p["item"].T)
    x = _left_padded(seqs, max_len)
    return np.concatenate([np.asarray(last(params, x[i:i + 256]))
                           for i in range(0, len(x), 256)])


# ---------------------------------------------------------------- evaluation

def metrics(ranks: list[float]) -> dict:
    r = np.asarray(ranks, dtype=float)
    return {"hr": float((r <= tq.K).mean()), "ndcg": ndcg_at_k(r, tq.K)}


def fused_ranks(logits: np.ndarray, blend: list[tuple[np.ndarray, np.ndarray]],
                seen: list[np.ndarray], targets: np.ndarray, w: float, temperature: float
                ) -> list[float]:
    ranks = []
    for r, (rows, scores) in enumerate(blend):
        z = logits[r].astype(np.float64) / temperature
        z[0] = -np.inf
        z[seen[r]] = -np.inf
        p = np.exp(z - z.max())
        total = w * p / p.max()
        if len(rows):
            total[rows] += scores / scores.max()
        total[0] = -np.inf
        total[seen[r]] = -np.inf
        top = np.argsort(-total, kind="stable")[:tq.K]
        hit = np.flatnonzero(top == targets[r])
        ranks.append(float(hit[0] + 1) if len(hit) else math.inf)
    return ranks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--dropout", type=float, default=0.5)
    args = ap.parse_args()
    started = time.time()
    tuned = tq.tuned_validation("sasrec_")
    val, items, cfg, knobs = tuned.val, tuned.items, tuned.cfg, tuned.knobs

    code = {item: c + 1 for c, item in enumerate(sorted(items["item_id"]))}
    users = list(val.targets)
    ordered = val.known.sort_values(["user_id", "ts", "item_id"], kind="stable")
    history = ordered.groupby("user_id", sort=False)["item_id"].agg(list)
    seqs = [[code[i] for i in history[u]] for u in users]
    seen = [np.fromiter((code[i] for i in val.seen_all[u]), dtype=np.int64) for u in users]
    targets = np.array([code[val.targets[u]] for u in users])

    index = val.index(knobs["pop_half_life_h"])
    features = tq.user_features(val, cfg, knobs, tuned.knn, tuned.cf, exclude_all_seen=True)
    blend = []
    for u in users:
        top = rank(features[u], index, cfg, Filters(), BLEND_TOP).items
        blend.append((np.array([code[s.item_id] for s in top], dtype=np.int64),
                      np.array([s.score for s in top])))

    print(f"training SASRec ({args.epochs} epochs, dropout {args.dropout})", flush=True)
    params = fit_sasrec(seqs, len(code), epochs=args.epochs, dropout=args.dropout)
    logits = sasrec_logits(params, seqs)

    rows = [("served blend (all seen excluded)",
             metrics(fused_ranks(logits, blend, seen, targets, 0.0, 1.0)))]
    empty = [(np.zeros(0, np.int64), np.zeros(0))] * len(users)
    rows.append(("SASRec alone", metrics(fused_ranks(logits, empty, seen, targets, 1.0, 1.0))))
    for temperature in (0.5, 1.0, 2.0):
        for w in (0.2, 0.4, 0.7, 1.0):
            rows.append((f"blend + {w} x SASRec (temperature {temperature})",
                         metrics(fused_ranks(logits, blend, seen, targets, w, temperature))))
    for what, m in rows:
        print(f"{what:45s} {tq.fmt(m)}", flush=True)

    lines = ["# Experiment 7: SASRec next to the served blend (MovieLens-100k validation)", "",
             "Generated by `benchmarks/sasrec_experiment.py` (see its docstring);"
             f" {args.epochs} epochs, dropout {args.dropout}, 64 dimensions, 2 blocks,"
             f" sequences of 50; {time.time() - started:.0f} s. Differences below about 0.005"
             " in HR@10 are noise (gensim with 2 workers is not bit-reproducible).", "",
             "| model | HR@10 | NDCG@10 |", "|---|---:|---:|"]
    lines += [f"| {what} | {m['hr']:.4f} | {m['ndcg']:.4f} |" for what, m in rows]
    REPORT.write_text("\n".join(lines) + "\n")
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
