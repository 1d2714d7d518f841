"""A small client of Airflow 3's REST API: unpause, trigger and watch DAG runs."""

from __future__ import annotations

import time
from typing import Any

import httpx

TERMINAL = {"success", "failed"}


class AirflowClient:
    """Talks to the API server; on the local stack every user is admin, so a token is free."""

    def __init__(self, base_url: str, timeout_s: float = 30.0) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=timeout_s)
        token = self.http.get("/auth/token").raise_for_status().json()["access_token"]
        self.http.headers["Authorization"] = f"Bearer {token}"

    def dag_ids(self) -> list[str]:
        body = self.http.get("/api/v2/dags", params={"limit": 100}).raise_for_status().json()
        return [d["dag_id"] for d in body["dags"]]

    def wait_for_dags(self, dag_ids: list[str], timeout_s: float = 120.0) -> None:
        """The DAG processor parses new files every few seconds; wait until it has."""
        deadline = time.monotonic() + timeout_s
        while not set(dag_ids) <= set(self.dag_ids()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Airflow has not parsed {dag_ids}; see `reco logs "
                                   "airflow-dag-processor`")
            time.sleep(2)

    def unpause(self, dag_id: str) -> None:
        self.http.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        response = self.http.post(
            f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}}
        )
        return response.raise_for_status().json()["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.http.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").raise_for_status().json()[
            "state"]

    def failed_tasks(self, dag_id: str, run_id: str) -> list[str]:
        body = self.http.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return [t["task_id"] for t in body.raise_for_status().json()["task_instances"]
                if t["state"] == "failed"]

    def wait(self, dag_id: str, run_id: str, timeout_s: float, on_poll=None) -> str:
        deadline = time.monotonic() + timeout_s
        while (state := self.run_state(dag_id, run_id)) not in TERMINAL:
            if on_poll is not None:
                on_poll(state)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id} run {run_id} still {state} after {timeout_s:.0f}s")
            time.sleep(3)
        return state
