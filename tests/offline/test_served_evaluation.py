"""The served evaluation's MLflow run says which model versions it measured."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from reco.served_evaluation import DemoReport, log_to_mlflow
from reco.settings import Settings


@pytest.mark.integration
def test_the_run_records_the_model_versions_it_measured(mlflow_server: str, settings: Settings
                                                        ) -> None:
    """Its table could not be tied to versions: a retrain or a promotion since changed
    what is served, and nothing in the run said so."""
    report = DemoReport(users=3, events_replayed=40,
                        metrics={"served (blend)": {"hr_at_10": 0.5, "users": 3}},
                        latency_ms={"p50": 2.0},
                        model_versions={"als": "v3", "item2vec": "v1,v2", "sasrec": "v9"})

    run_id = log_to_mlflow(settings.model_copy(update={"mlflow_tracking_uri": mlflow_server}),
                           report, "local")

    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert {k: v for k, v in run.data.params.items() if k.startswith("model_versions.")} == {
        "model_versions.als": "v3", "model_versions.item2vec": "v1,v2",
        "model_versions.sasrec": "v9"}
    assert run.data.metrics["served_blend.hr_at_10"] == 0.5
    assert client.get_experiment(run.info.experiment_id).name == "served-evaluation"
    assert run.info.status == "FINISHED"  # was RUNNING for ever in the MLflow UI
