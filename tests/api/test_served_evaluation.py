"""The served evaluation (`reco demo`'s last step, `reco evaluate`) asks a real
`reco run recommendations` and records which model versions answered."""

from __future__ import annotations

from typer.testing import CliRunner

from reco.cli import app
from reco.served_evaluation import served_recommendations, versions_answered
from reco.settings import Settings, get_settings
from reco.stack.health import free_port, tcp_open, wait_until
from tests.reliability.conftest import process_env, start_process


def test_the_answers_name_the_model_versions_they_were_ranked_with(
        settings: Settings, world: dict, tmp_path) -> None:
    """A served-evaluation table could not be tied to the models that produced it."""
    port = free_port()
    proc = start_process("recommendations", process_env(settings, RECO_RECO_PORT=str(port)),
                         tmp_path)
    try:
        assert wait_until(lambda: tcp_open("127.0.0.1", port), 60,
                          alive=lambda: proc.poll() is None), "the API did not start"
        served = served_recommendations(settings.model_copy(update={"reco_port": port}),
                                        ["u1", "nobody"], k=3, concurrency=2)
    finally:
        proc.terminate()
        proc.wait(20)

    assert served.strategies == {"personalized": 1, "popular": 1}
    assert served.model_versions == {"item2vec": "v1"}  # world: Item2Vec v1 published
    assert served.ranked["nobody"] == ["P", "A", "W"]  # the most popular
    assert len(served.latencies_ms) == 2


def test_versions_published_during_an_evaluation_are_all_named() -> None:
    bodies = [{"model_versions": {"als": "v2"}}, {"model_versions": {}},
              {"model_versions": {"als": "v1", "item2vec": "v1"}}]
    assert versions_answered(bodies) == {"als": "v1,v2", "item2vec": "v1"}


def test_evaluate_without_a_demo_says_what_to_run(tmp_path) -> None:
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["evaluate"],
                                    env={"RECO_STATE_DIR": str(tmp_path / "state")})
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert "run `reco demo` first" in result.output


def test_evaluate_with_the_api_down_says_to_start_the_stack(tmp_path) -> None:
    """It printed httpx's traceback."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "demo-loaded.json").write_text(
        '{"max_users": 5, "engine": "local", "events_replayed": 100}')
    port = free_port()
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["evaluate"], env={
            "RECO_STATE_DIR": str(state), "RECO_RECO_PORT": str(port)})
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    assert f"the recommendation API (port {port}) is not answering" in said
    assert "start the stack with `reco up`" in said
