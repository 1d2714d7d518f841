"""The served configuration against tuning.json choices, SASRec on top, on MovieLens-100k
VALIDATION only.

Each configuration (the served one: Settings and the *Params defaults; or a tuning.json's
`chosen` rank weights, knobs, Item2Vec and ALS parameters, the rest from Settings) gets its own
Item2Vec and ALS models on the validation split and is
ranked as the API ranks (every item the user touched excluded) by `tune_quality.evaluate`,
without SASRec and with it at Settings' w_seq. SASRec (the served parameters, one network per
seed) does not depend on the configurations: each seed's network is trained once and serves
both. `--i2v-workers 1` makes Item2Vec bit-reproducible (gensim with 2 workers moves HR@10 by
about 0.01 per run), so that the configurations differ only by what they choose.

Run (2-3 minutes per SASRec seed on 2 quiet cores, 4-5 on a loaded machine, plus a few minutes
per configuration):
    PYTHONHASHSEED=0 .venv/bin/python benchmarks/compare_tuning.py benchmarks/reports/tuning.json \
        --seeds 0 1
Prints a table; writes no report. Its scratch folder (the extract's sessions and interactions)
is removed on exit. Each seed's SASRec logits are kept in `--cache` (/tmp/compare_tuning): a
later run with the same seed and sequences reads them instead of training the network again.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import tune_quality as tq  # noqa: E402
from sasrec_experiment import known_sequences, seq_lists  # noqa: E402
from sasrec_variants import network_logits  # noqa: E402

from reco.evaluation_split import leave_last_out  # noqa: E402
from reco.features import FeatureParams  # noqa: E402
from reco.ranking import RankConfig  # noqa: E402
from reco.settings import Settings  # noqa: E402
from spark_jobs import als as als_job  # noqa: E402
from spark_jobs import item2vec as i2v_job  # noqa: E402
from spark_jobs import sasrec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tunings", type=Path, nargs="*",
                    help="tuning.json files to compare with the served configuration")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--i2v-workers", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/compare_tuning"),
                    help="SASRec logits per seed and sequences (keyed by both)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cmp_") as tmp:
        compare(args, Path(tmp))


def compare(args: argparse.Namespace, tmp: Path) -> None:
    settings = Settings()
    events, items = tq.load()
    split = leave_last_out(events.assign(ts=events["timestamp"] / 1000.0))
    val = tq.Split("validation", split.train, split.train, split.validation, items,
                   FeatureParams.from_settings(settings), tmp)
    # The SparkSession before SASRec: pyspark starts its JVM by forking this process, and once
    # JAX has initialised its (multithreaded) backend a fork warns of a possible deadlock. With
    # the JVM up first, nothing forks after JAX (Spark's Python workers are the JVM's children).
    tq.spark()
    user_ids, item_ids, seqs, _ = known_sequences(val)
    base = sasrec.SASRecParams()
    seq = {}
    for seed in args.seeds:
        logits, train_s = network_logits(seqs, len(item_ids), replace(base, seed=seed),
                                         args.cache)
        seq[seed] = seq_lists(user_ids, item_ids, seqs, logits, base.temperature, base.candidates)
        print(f"SASRec seed {seed}: trained in {train_s:.0f} s", flush=True)

    rows = []
    configurations = {"served": tq.served_choice(settings)} | {
        str(path): json.loads(path.read_text())["chosen"] for path in args.tunings}
    for name, chosen in configurations.items():
        knobs = chosen["knobs"]
        i2v = i2v_job.Item2VecParams(**chosen["item2vec"] | {"workers": args.i2v_workers})
        knn = tq.train_item2vec(val, i2v, knobs["session_gap_s"])
        cf = tq.train_als(val, als_job.ALSParams(**chosen["als"]), knobs["als_half_life_days"])
        cfg = replace(RankConfig.from_settings(settings), **chosen["rank"])
        m = tq.evaluate(val, replace(cfg, w_seq=0.0), knobs, knn, cf)
        rows.append((name, "without SASRec", m))
        with_seq = []
        for seed in args.seeds:
            with_seq.append(tq.evaluate(val, cfg, knobs, knn, cf, seq=seq[seed]))
            rows.append((name, f"w_seq {cfg.w_seq}, SASRec seed {seed}", with_seq[-1]))
        rows.append((name, f"w_seq {cfg.w_seq}, mean over seeds",
                     {k: float(np.mean([r[k] for r in with_seq])) for k in ("hr", "ndcg")}))
        for row in rows[-len(args.seeds) - 2:]:
            print(f"{row[0]} | {row[1]} | {tq.fmt(row[2])}", flush=True)
    print("\n| configuration | ranking | HR@10 | NDCG@10 |\n|---|---|---:|---:|")
    for name, what, m in rows:
        print(f"| {name} | {what} | {m['hr']:.4f} | {m['ndcg']:.4f} |")


if __name__ == "__main__":
    main()
