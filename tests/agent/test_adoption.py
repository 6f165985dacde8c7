"""Re-adoption after an agent restart: replicas survive the agent, the next agent finds
them again (same process, no restart) or cleans them up when they are no longer desired,
and never mistakes an unrelated process for one of its replicas."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time

import httpx

from tests.agent.conftest import desired, launches, make_model, make_spec, pid_alive
from workers.agent import processes
from workers.agent.statefile import StateFile


def test_replicas_survive_an_agent_restart_and_are_adopted(settings, harness_factory):
    model_dir = make_model(settings)
    spec = make_spec()
    first = harness_factory(settings)
    first.apply(desired(3, spec))
    pid = first.wait_state(spec["id"], "ready")["pid"]
    first.stop(stop_replicas=False)
    assert pid_alive(pid)  # left running for the next agent

    saved = json.loads((settings.state_dir / "state.json").read_text())
    assert saved["generation_applied"] == 3
    entry = saved["replicas"][spec["id"]]
    assert entry["pid"] == pid and entry["port"] == spec["port"]
    assert spec["api_key"] not in json.dumps(saved)  # a reference, never the key
    assert (settings.state_dir / "state.json").stat().st_mode & 0o777 == 0o600

    second = harness_factory(settings)
    replica = second.replica(spec["id"])
    assert replica["state"] == "ready" and replica["pid"] == pid
    assert second.supervisor.generation_applied == 3

    # The control plane's next message names it unchanged: nothing restarts.
    assert second.apply(desired(3, spec)) is True
    time.sleep(0.5)
    assert second.replica(spec["id"])["pid"] == pid
    assert len(launches(model_dir)) == 1

    # Once its spec is known again, a crash of the adopted process is repaired.
    with contextlib.suppress(httpx.HTTPError):  # the process dies mid-answer
        httpx.post(f"http://127.0.0.1:{spec['port']}/fake/crash", timeout=5)
    replica = second.wait_state(spec["id"], "ready", restarts=1)
    assert replica["pid"] != pid
    assert len(launches(model_dir)) == 2


def test_a_stale_generation_after_restart_is_still_ignored(settings, harness_factory):
    make_model(settings)
    spec = make_spec()
    first = harness_factory(settings)
    first.apply(desired(7, spec))
    first.wait_state(spec["id"], "ready")
    first.stop(stop_replicas=False)

    second = harness_factory(settings)
    assert second.apply(desired(6)) is False  # queued before the restart, older
    time.sleep(0.3)
    assert second.replica(spec["id"])["state"] == "ready"


def test_adopted_replicas_not_desired_any_more_are_drained_and_stopped(settings, harness_factory):
    make_model(settings)
    kept, dropped = make_spec(), make_spec()
    first = harness_factory(settings)
    first.apply(desired(1, kept, dropped))
    kept_pid = first.wait_state(kept["id"], "ready")["pid"]
    dropped_pid = first.wait_state(dropped["id"], "ready")["pid"]
    first.stop(stop_replicas=False)

    second = harness_factory(settings)
    assert {r for r in second.replicas()} == {kept["id"], dropped["id"]}
    second.apply(desired(2, kept))
    second.wait_gone(dropped["id"])
    assert not pid_alive(dropped_pid)
    assert "draining" in second.states_of(dropped["id"])
    assert second.replica(kept["id"])["pid"] == kept_pid


def test_a_changed_spec_replaces_an_adopted_replica(settings, harness_factory):
    make_model(settings)
    spec = make_spec()
    first = harness_factory(settings)
    first.apply(desired(1, spec))
    pid = first.wait_state(spec["id"], "ready")["pid"]
    first.stop(stop_replicas=False)

    second = harness_factory(settings)
    second.apply(desired(2, {**spec, "spec_hash": "hash-2"}))
    replica = second.wait_state(spec["id"], "ready", spec_hash="hash-2")
    assert replica["pid"] != pid
    assert not pid_alive(pid)


def test_an_unrelated_process_with_a_recorded_pid_is_left_alone(settings, harness_factory):
    # A pid from the state file now belongs to another process (pid reuse, or a
    # state file from before a reboot): it must be neither adopted nor signalled.
    stranger = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        start_time = processes.proc_start_time(stranger.pid)
        state = {
            "version": 1,
            "generation_applied": 2,
            "replicas": {
                "r-same-start-wrong-port": {
                    "id": "r-same-start-wrong-port",
                    "pid": stranger.pid,
                    "start_time": start_time,
                    "port": 18123,
                    "spec_hash": "h",
                    "api_key_sha256": "x",
                    "log_path": "",
                },
                "r-other-start": {
                    "id": "r-other-start",
                    "pid": stranger.pid,
                    "start_time": start_time - 1,
                    "port": 18124,
                    "spec_hash": "h",
                    "api_key_sha256": "x",
                    "log_path": "",
                },
            },
        }
        (settings.state_dir / "state.json").write_text(json.dumps(state))
        harness = harness_factory(settings)
        assert harness.replicas() == {}
        assert harness.supervisor.generation_applied == 2
        assert stranger.poll() is None  # not killed
        assert StateFile(settings.state_dir).load().replicas == {}  # forgotten
    finally:
        stranger.kill()
        stranger.wait()


def test_stop_with_stop_replicas_drains_and_stops_everything(settings, harness_factory):
    make_model(settings)
    specs = [make_spec(), make_spec()]
    harness = harness_factory(settings)
    harness.apply(desired(1, *specs))
    pids = [harness.wait_state(spec["id"], "ready")["pid"] for spec in specs]
    harness.stop(stop_replicas=True)
    assert not any(pid_alive(pid) for pid in pids)
    assert StateFile(settings.state_dir).load().replicas == {}
