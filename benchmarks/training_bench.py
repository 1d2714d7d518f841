"""Offline training benchmark: time per stage for both models and both engines, with quality.

    .venv/bin/python benchmarks/training_bench.py [--sizes 100000 1000000] [--engines local spark]
        [--dag] [--cli]

Starts its own PostgreSQL, Redis and MLflow server (free ports, throwaway folders), loads
`reco data synthetic` events into PostgreSQL with COPY, then runs extract -> train (+
neighbours) -> evaluate -> gate -> publish through spark_jobs.pipeline, exactly what the DAGs
run. Also times publishing 100,000 items x 100 neighbours, and with --dag / --cli the whole
daily DAG in fresh processes (`airflow dags test item2vec_daily`, `reco train item2vec`, engine
local) next to the target (< 180 s on 1M events). Writes benchmarks/reports/training.{md,json}
and prints the table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reco import db  # noqa: E402
from reco.data.synthetic import SyntheticConfig, generate  # noqa: E402
from reco.settings import Settings  # noqa: E402
from reco.stack import servers as stack_servers  # noqa: E402
from reco.stack.health import free_port, http_ok, wait_until  # noqa: E402
from spark_jobs import pipeline, publish  # noqa: E402
from tests import servers  # noqa: E402

REPORTS = ROOT / "benchmarks" / "reports"
FAST = {"item2vec": {}, "als": {}}


def start_mlflow(pg_port: int, workdir: Path) -> subprocess.Popen:
    base = Settings(pg_port=pg_port)
    port = free_port()
    log = open(workdir / "mlflow.log", "ab")  # noqa: SIM115
    # The store URI (with the password) through the environment: a command line shows in `ps`.
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": base.pg_url(base.pg_mlflow_database)}
    proc = subprocess.Popen(
        [stack_servers.venv_bin("mlflow"), "server", "--artifacts-destination",
         str(workdir / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    proc.uri = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    if not wait_until(lambda: http_ok(f"{proc.uri}/health"), 180,  # type: ignore[attr-defined]
                      alive=lambda: proc.poll() is None):
        raise RuntimeError((workdir / "mlflow.log").read_text()[-3000:])
    return proc


def load_events(settings: Settings, n_events: int, workdir: Path) -> dict:
    """`reco data synthetic` at this size, COPY'd into PostgreSQL `events`."""
    cfg = SyntheticConfig(users=max(200, n_events // 50), items=max(100, n_events // 100),
                          events=n_events, seed=1, days=30)
    out = workdir / f"synthetic-{n_events}"
    started = time.perf_counter()
    generate(cfg, out)
    table = pq.read_table(out / "events.parquet")
    gen_s = time.perf_counter() - started
    started = time.perf_counter()
    ts = table.column("timestamp").to_numpy()
    times = [datetime.fromtimestamp(t / 1000, UTC).isoformat() for t in ts.tolist()]
    import pyarrow as pa

    frame = pa.table({"event_id": table.column("event_id"), "user_id": table.column("user_id"),
                      "item_id": table.column("item_id"),
                      "event_type": table.column("event_type"),
                      "event_time": pa.array(times), "session_id": table.column("session_id")})
    buf = io.BytesIO()
    pacsv.write_csv(frame, buf, pacsv.WriteOptions(include_header=False))
    with db.connect(settings) as conn:
        # Its own scratch database: the log refuses TRUNCATE unless told (sql/006).
        conn.execute("SELECT set_config('reco.allow_truncate', 'on', true)")
        conn.execute("TRUNCATE events, models")
        with conn.cursor() as cur, cur.copy(
                "COPY events (event_id, user_id, item_id, event_type, event_time, session_id)"
                " FROM STDIN WITH (FORMAT csv)") as copy:
            copy.write(buf.getvalue())
        conn.commit()
        conn.execute("ANALYZE events")
    return {"events": table.num_rows, "users": cfg.users, "items": cfg.items,
            "end": datetime.fromtimestamp(cfg.end_ms / 1000, UTC), "generate_s": gen_s,
            "load_s": time.perf_counter() - started}


def run_model(settings: Settings, spark, model: str, engine: str, end: datetime,
              run_dir: Path) -> dict:
    cfg = pipeline.config_from_settings(settings, model, run_dir=run_dir, engine=engine,
                                        window_days=31, window_end=end, params=FAST[model])
    started = time.perf_counter()
    state = pipeline.extract_step(cfg, spark)
    state = pipeline.train_step(cfg, state, spark)
    state = pipeline.evaluate_step(cfg, state)
    state = pipeline.gate_step(cfg, state)
    state = pipeline.publish_step(cfg, state)
    total = time.perf_counter() - started
    t = state["timings"]
    m = state["metrics"]
    return {"model": model, "engine": engine, "extract_s": t["extract_s"],
            "train_s": t["train_s"], "neighbours_s": t["neighbours_s"],
            "evaluate_s": t["evaluate_s"], "publish_s": t.get("publish_s"), "total_s": total,
            "hr_at_10": m["model.hr_at_10"], "ndcg_at_10": m["model.ndcg_at_10"],
            "pop_hr_at_10": m["popularity.hr_at_10"], "blend_hr_at_10": m["blend.hr_at_10"],
            "coverage": m["model.coverage"], "keys": state.get("keys_written"),
            "gate": state["gate"]["accepted"],
            "extract_detail": {k: v for k, v in t.items() if k.startswith("extract.")}}


def publish_bench(redis_url: str, workdir: Path, items: int = 100_000, k: int = 100) -> dict:
    """Publish a model file of `items` x `k` neighbours twice, through publish.model_lists."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    rng = np.random.default_rng(0)
    model_dir = workdir / "publish-bench"
    model_dir.mkdir(parents=True, exist_ok=True)
    np.savez(model_dir / "model.npz", item_ids=np.asarray([f"item-{i}" for i in range(items)]),
             nbr_idx=rng.integers(0, items, size=(items, k)).astype(np.int32),
             nbr_scores=np.sort(rng.random((items, k), dtype=np.float32), axis=1)[:, ::-1])
    out = {}
    for version in ("bench-v1", "bench-v2"):
        result = publish.publish(client, "item2vec", version,
                                 publish.model_lists("item2vec", model_dir, version), batch=5000)
        out[version] = {"seconds": result.seconds, "keys": result.keys_written,
                        "expiring": result.keys_expiring}
    out["used_memory_mb"] = client.info("memory")["used_memory"] / 2**20
    return out


def _reco_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, "RECO_PG_PORT": str(settings.pg_port), "RECO_REDIS_URL":
            settings.redis_url, "RECO_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
            "RECO_STATE_DIR": str(settings.state_dir), "RECO_SPARK_JARS_DIR":
            str(settings.spark_jars_dir), "RECO_JDBC_PARTITIONS": str(settings.jdbc_partitions),
            "RECO_SPARK_DRIVER_MEMORY": settings.spark_driver_memory, "RECO_ENGINE": "local"}


def cli_run(settings: Settings, model: str, engine: str, end: datetime) -> dict:
    """`reco train` in a fresh process (cold JVM, own SparkSession): what one DAG run costs."""
    started = time.perf_counter()
    result = subprocess.run(
        [stack_servers.venv_bin("reco"), "train", model, "--engine", engine, "--window-days",
         "31", "--window-end", end.isoformat()], env=_reco_env(settings), capture_output=True,
        text=True)
    return {"model": model, "engine": engine, "wall_s": time.perf_counter() - started,
            "ok": result.returncode == 0, "tail": (result.stdout + result.stderr)[-500:]}


def airflow_env(settings: Settings, workdir: Path) -> dict[str, str]:
    """An Airflow home on the benchmark's PostgreSQL `airflow` database, migrated once."""
    home = workdir / "airflow-home"
    home.mkdir(exist_ok=True)
    env = {**_reco_env(settings), "AIRFLOW_HOME": str(home),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": settings.pg_url(
               settings.pg_airflow_database, driver="postgresql+psycopg2"),
           "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://127.0.0.1:1/execution/"}
    result = subprocess.run([stack_servers.venv_bin("airflow"), "db", "migrate"], env=env,
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(result.stdout[-2000:] + result.stderr[-2000:])
    return env


def dag_run(env: dict[str, str], model: str, end: datetime) -> dict:
    """`airflow dags test` of the model's DAG: every task, as the scheduler would run it."""
    dag_id = {"item2vec": "item2vec_daily", "als": "als_weekly"}[model]
    # promote "gate": the timed DAG publishes as before (31 days would make it an experiment)
    conf = {"engine": "local", "window_end": end.isoformat(), "window_days": 31,
            "promote": "gate"}
    started = time.perf_counter()
    result = subprocess.run([stack_servers.venv_bin("airflow"), "dags", "test", dag_id, "-c",
                             json.dumps(conf)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    output = result.stdout + result.stderr
    return {"dag_id": dag_id, "model": model, "engine": "local", "wall_s": wall,
            "ok": result.returncode == 0 and "state=failed" not in output.lower(),
            "tail": output[-500:]}


TARGET_S = 180.0  # the whole daily DAG on 1M events with engine local


def _target_lines(results: dict) -> list[str]:
    """Whole-DAG wall times (fresh processes, cold JVM) next to the target."""
    lines = []
    for size in results["sizes"]:
        for d in size.get("dag", []):
            met = "met" if d["ok"] and d["wall_s"] < TARGET_S else "NOT met"
            lines.append(f"- `airflow dags test {d['dag_id']}` (engine local, every task) on "
                         f"{size['events']:,} events: {d['wall_s']:.1f} s wall, "
                         f"{'ok' if d['ok'] else 'FAILED'}"
                         + (f"; target < {TARGET_S:.0f} s {met}." if size["events"] == 1_000_000
                            else "."))
        for c in size.get("cli", []):
            met = "met" if c["ok"] and c["wall_s"] < TARGET_S else "NOT met"
            lines.append(f"- `reco train {c['model']} --engine {c['engine']}` on "
                         f"{size['events']:,} events in a fresh process (cold JVM, every step): "
                         f"{c['wall_s']:.1f} s wall, {'ok' if c['ok'] else 'FAILED'}"
                         + (f"; target < {TARGET_S:.0f} s {met}." if size["events"] == 1_000_000
                            and c["model"] == "item2vec" and c["engine"] == "local" else "."))
    return lines


PUBLISH_TARGET_S = 30.0  # each version of 100,000 items x 100 neighbours


def _s(value: float | None, unit: str = "") -> str:
    """Seconds with one decimal, or a dash when not measured (None is not 0)."""
    return "—" if value is None else f"{value:.1f}{unit}"


def _merged_lines(results: dict) -> list[str]:
    """What --merge kept from earlier reports, by the run that measured it."""
    by_run: dict[str, dict[str, list[str]]] = {}  # run -> events or "publish" -> what

    def keep(entry: dict, group: str, what: str) -> None:
        if "run" in entry:
            by_run.setdefault(entry["run"], {}).setdefault(group, []).append(what)

    for size in results["sizes"]:
        events = f"{size['events']:,} events"
        keep(size, events, "generated and loaded")
        for r in size["runs"]:
            keep(r, events, f"{r['model']} {r['engine']}")
        for d in size.get("dag", []):
            keep(d, events, "`airflow dags test`")
        for c in size.get("cli", []):
            keep(c, events, "`reco train`")
    keep(results.get("publish", {}), "publish", "100,000 items x 100 neighbours")
    if not by_run:
        return []
    return ["", "Kept from earlier runs by `--merge` (everything else is from this run):"] + [
        f"- run {run}: " + "; ".join(f"{group} ({', '.join(what)})" for group, what in
                                     groups.items()) + "."
        for run, groups in sorted(by_run.items())]


def report(results: dict) -> str:
    merged = _merged_lines(results)
    lines = ["# Offline training benchmark", "",
             f"Machine: {os.cpu_count()} cores; run {results['started']}"
             + ("; some rows are from earlier runs, listed under the table." if merged else "."),
             "",
             "| events | model | engine | extract s | train s | neighbours s | evaluate s |"
             " publish s | total s | HR@10 | NDCG@10 | HR@10 popularity | HR@10 blend |"
             " coverage | gate |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for size in results["sizes"]:
        for r in size["runs"]:
            if "error" in r:
                lines.append(f"| {size['events']:,} | {r['model']} | {r['engine']} | "
                             f"error: {r['error'][:80]} |")
                continue
            lines.append(
                f"| {size['events']:,} | {r['model']} | {r['engine']} | {r['extract_s']:.1f} | "
                f"{r['train_s']:.1f} | {r['neighbours_s']:.1f} | {r['evaluate_s']:.1f} | "
                f"{_s(r['publish_s'])} | {r['total_s']:.1f} | {r['hr_at_10']:.3f} | "
                f"{r['ndcg_at_10']:.3f} | {r['pop_hr_at_10']:.3f} | {r['blend_hr_at_10']:.3f} |"
                f" {r['coverage']:.3f} | {'pass' if r['gate'] else 'reject'} |")
    lines += merged
    lines += ["", f"SparkSession start: {_s(results.get('spark_start_s'), ' s')} (once per DAG "
              "task that uses Spark).", ""]
    for size in results["sizes"]:
        lines.append(f"- {size['events']:,} events ({size['users']:,} users, {size['items']:,}"
                     f" items): generated in {size['generate_s']:.1f} s, COPY'd in"
                     f" {size['load_s']:.1f} s.")
    lines += _target_lines(results)
    for size in results["sizes"]:
        extract = next((r.get("extract_detail") for r in size["runs"]
                        if r.get("model") == "item2vec" and r.get("engine") == "local"
                        and r.get("extract_detail")), None)
        if extract:
            lines.append(f"- extract of {size['events']:,} events (item2vec, seconds per Spark "
                         "action): " + ", ".join(f"{k.removeprefix('extract.')} {v:.1f}"
                                                  for k, v in extract.items()) + ".")
    pub = results.get("publish")
    if pub:
        met = all(pub[v]["seconds"] < PUBLISH_TARGET_S for v in ("bench-v1", "bench-v2"))
        lines += ["", "Publish 100,000 items x 100 neighbours (versioned keys, one switch): "
                  f"{pub['bench-v1']['seconds']:.1f} s first version, "
                  f"{pub['bench-v2']['seconds']:.1f} s second (incl. grace TTL on the first's "
                  f"{pub['bench-v2']['expiring']:,} keys); Redis used "
                  f"{pub['used_memory_mb']:.0f} MiB with both versions. Target < "
                  f"{PUBLISH_TARGET_S:.0f} s for each version: {'PASS' if met else 'FAIL'}."]
    return "\n".join(lines) + "\n"


def _stamp(size: dict, started: str) -> None:
    """Mark a size kept from an earlier report, and its rows, with the run that measured them
    (an entry already marked came from a merge before and keeps its older run)."""
    for entry in [size, *size["runs"], *size.get("dag", []), *size.get("cli", [])]:
        entry.setdefault("run", started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--engines", nargs="+", default=["local", "spark"])
    parser.add_argument("--models", nargs="+", default=["item2vec", "als"])
    parser.add_argument("--skip-publish-bench", action="store_true")
    parser.add_argument("--cli", action="store_true",
                        help="also time `reco train item2vec --engine local` in a new process")
    parser.add_argument("--dag", action="store_true",
                        help="also time `airflow dags test item2vec_daily` (engine local)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the existing report's rows this run does not repeat (other"
                             " sizes, engines or models); the report lists them by the run that"
                             " measured them")
    args = parser.parse_args()
    results: dict = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "sizes": []}
    previous = REPORTS / "training.json"
    kept: dict[int, dict] = {}  # events -> that size's entry in the existing report
    if args.merge and previous.exists():
        old = json.loads(previous.read_text())
        for size in old["sizes"]:
            _stamp(size, old["started"])
        kept = {s["events"]: s for s in old["sizes"]}
        results["sizes"] = [s for s in old["sizes"] if s["events"] not in args.sizes]
        # spark_start_s is not kept: it is measured again before any report is written.
        if "publish" in old:
            results["publish"] = {"run": old["started"], **old["publish"]}
    pg, rd = servers.start_postgres(), servers.start_redis()
    workdir = Path(tempfile.mkdtemp(prefix="reco-training-bench-"))
    mlflow, env = None, None
    try:
        base = Settings(pg_port=pg.port)
        stack_servers.ensure_databases(pg.port, base.pg_user, base.pg_password.get_secret_value(),
                                       [base.pg_database, base.pg_mlflow_database,
                                        base.pg_airflow_database])
        db.migrate(base)
        mlflow = start_mlflow(pg.port, workdir)
        settings = base.model_copy(update={
            "redis_url": f"redis://127.0.0.1:{rd.port}/1", "state_dir": workdir,
            "mlflow_tracking_uri": mlflow.uri, "spark_jars_dir": servers.JARS_DIR,
            "jdbc_partitions": 4, "spark_driver_memory": "4g"})
        if not args.skip_publish_bench:
            results["publish"] = publish_bench(f"redis://127.0.0.1:{rd.port}/2", workdir)
            print("publish", json.dumps(results["publish"]), flush=True)
        started = time.perf_counter()
        spark = pipeline.spark_session(pipeline.config_from_settings(settings, "item2vec"))
        results["spark_start_s"] = time.perf_counter() - started
        for n in args.sizes:
            size = load_events(settings, n, workdir)
            end = size.pop("end")
            size["runs"] = []
            for engine in args.engines:
                for model in args.models:
                    run_dir = workdir / f"{n}-{model}-{engine}"
                    try:
                        r = run_model(settings, spark, model, engine, end, run_dir)
                    except Exception as exc:  # keep the other measurements
                        r = {"model": model, "engine": engine, "error": repr(exc)}
                    print(json.dumps(r), flush=True)
                    size["runs"].append(r)
            if args.dag:
                env = env or airflow_env(settings, workdir)
                size["dag"] = [dag_run(env, "item2vec", end)]
                print(json.dumps(size["dag"]), flush=True)
            if args.cli:
                size["cli"] = [cli_run(settings, "item2vec", "local", end)]
                print(json.dumps(size["cli"]), flush=True)
            earlier = kept.get(n)
            if earlier:  # rows of this size that this run did not repeat
                redone = {(r["engine"], r["model"]) for r in size["runs"]}
                size["runs"] = [r for r in earlier["runs"]
                                if (r["engine"], r["model"]) not in redone] + size["runs"]
                for key in ("dag", "cli"):
                    if key not in size and key in earlier:
                        size[key] = earlier[key]
            results["sizes"].append(size)
            results["sizes"].sort(key=lambda s: s["events"])
            REPORTS.mkdir(parents=True, exist_ok=True)
            (REPORTS / "training.json").write_text(json.dumps(results, indent=2, default=str))
            (REPORTS / "training.md").write_text(report(results))
        spark.stop()
    finally:
        if mlflow is not None:
            os.killpg(mlflow.pid, 15)
            mlflow.wait(30)
        servers.remove(pg)
        servers.remove(rd)
        shutil.rmtree(workdir, ignore_errors=True)
    text = report(results)
    (REPORTS / "training.md").write_text(text)
    (REPORTS / "training.json").write_text(json.dumps(results, indent=2, default=str))
    print(text)


if __name__ == "__main__":
    main()
