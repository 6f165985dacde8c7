"""The supervisor against the fake engine: start, health, load, crash and back-off,
drain, stale generations, rolling replacement, process-group cleanup."""

from __future__ import annotations

import itertools
import threading
import time

import httpx

from tests.agent.conftest import (
    desired,
    launches,
    make_model,
    make_spec,
    pid_alive,
    wait_for,
    with_settings,
)


def chat(port: int, api_key: str, **body) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        headers={"Authorization": f"Bearer {api_key}"},
        json={"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], **body},
        timeout=60,
    )


def test_starts_a_replica_reports_ready_and_load(settings, harness):
    model_dir = make_model(settings, healthy_after=0.5)
    spec = make_spec()
    assert harness.apply(desired(1, spec)) is True

    replica = harness.wait_state(spec["id"], "ready")
    assert replica["spec_hash"] == "hash-1"
    assert replica["port"] == spec["port"]
    assert pid_alive(replica["pid"])
    assert replica["restarts"] == 0
    assert harness.states_of(spec["id"])[:3] == ["pending", "starting", "ready"]

    # The replica's own key guards it; the agent passed it on the command line.
    assert chat(spec["port"], spec["api_key"]).status_code == 200
    assert chat(spec["port"], "wrong-key").status_code == 401

    replica = wait_for(
        lambda: (
            (r := harness.replica(spec["id"]))
            and r["load"].get("prompt_tokens_total", 0) >= 5
            and r
        ),
        what="load with the prompt tokens of one request",
    )
    assert replica["load"]["num_requests_running"] == 0
    assert replica["load"]["kv_cache_usage_perc"] == 0.25
    assert replica["load"]["generation_tokens_total"] >= 1

    (launch,) = launches(model_dir)
    argv = launch["argv"]
    assert argv[argv.index("--port") + 1] == str(spec["port"])
    assert "--api-key" not in argv and spec["api_key"] not in " ".join(argv)  # not in /proc
    assert launch["env"]["VLLM_API_KEY"] == spec["api_key"]
    assert argv[argv.index("--served-model-name") + 1] == "fake-chat"
    assert "--trust-remote-code" not in argv
    assert launch["env"]["HF_HUB_OFFLINE"] == "1"
    assert launch["env"]["CUDA_VISIBLE_DEVICES"] is None  # a CPU node
    assert launch["pgid"] == launch["pid"]  # its own process group


def test_same_desired_state_twice_is_harmless(settings, harness):
    model_dir = make_model(settings)
    spec = make_spec()
    harness.apply(desired(1, spec))
    pid = harness.wait_state(spec["id"], "ready")["pid"]
    assert harness.apply(desired(1, spec)) is True
    assert harness.apply(desired(2, spec)) is True
    time.sleep(0.5)
    assert harness.replica(spec["id"])["pid"] == pid
    assert len(launches(model_dir)) == 1


def test_stale_generation_never_undoes_a_newer_one(settings, harness):
    make_model(settings)
    old, new = make_spec(), make_spec()
    assert harness.apply(desired(5, new)) is True
    harness.wait_state(new["id"], "ready")
    # Generation 4 (say, delayed in the queue) would stop `new` and start `old`.
    assert harness.apply(desired(4, old)) is False
    time.sleep(0.5)
    assert set(harness.replicas()) == {new["id"]}
    assert harness.supervisor.generation_applied == 5


def test_crashed_replica_restarts_with_exponential_backoff(settings, harness_factory):
    settings = with_settings(
        settings, restart_backoff_initial_seconds=0.3, restart_backoff_max_seconds=1.2
    )
    harness = harness_factory(settings)
    # Crashes 0.3 s after each of its first 4 starts, then stays up.
    model_dir = make_model(settings, crash_after=0.3, crash_times=4, exit_code=3)
    spec = make_spec()
    harness.apply(desired(1, spec))

    replica = harness.wait_state(spec["id"], "ready", timeout=60, restarts=4)
    time.sleep(0.5)  # still up: the fifth start does not crash
    replica = harness.replica(spec["id"])
    assert replica["state"] == "ready"
    assert replica["restarts"] == 4
    assert "exited with code 3" in replica["last_error"]
    assert "RuntimeError: fake engine crashed (start 4)" in replica["last_error"]
    states = harness.states_of(spec["id"])
    assert states.count("failed") == 4

    # Back-off doubles between restarts up to the maximum ...
    runner = harness.supervisor.runners[spec["id"]]
    assert runner.backoff_delays == [0.3, 0.6, 1.2, 1.2]
    # ... and is really waited: each start follows the previous one by at least the
    # crash delay (0.3 s) plus the back-off (lower bounds only: a busy machine is slower).
    starts = [entry["time"] for entry in launches(model_dir)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert len(gaps) == 4
    for gap, delay in zip(gaps, runner.backoff_delays, strict=True):
        assert gap >= 0.3 + delay - 0.05, (gaps, runner.backoff_delays)
    print(f"\nstart-to-start gaps with back-off {runner.backoff_delays}: {gaps}")


def test_health_failures_restart_a_replica_that_still_runs(settings, harness):
    make_model(settings, unhealthy_after=1.0)
    spec = make_spec()
    harness.apply(desired(1, spec))
    first_pid = harness.wait_state(spec["id"], "ready")["pid"]
    replica = harness.wait_state(spec["id"], "ready", timeout=60, restarts=1)
    assert replica["pid"] != first_pid
    assert not pid_alive(first_pid)
    assert "/health failed 3 times" in replica["last_error"]


def test_replica_that_cannot_start_is_failed_with_the_reason(settings, harness):
    spec = make_spec(model="no-such-model")
    harness.apply(desired(1, spec))
    replica = harness.wait_state(spec["id"], "failed")
    assert "does not exist on this node" in replica["last_error"]
    assert replica["pid"] is None
    assert replica["restarts"] == 0


def test_port_outside_the_node_range_is_refused(settings, harness_factory):
    harness = harness_factory(with_settings(settings, port_range=(20000, 20010)))
    make_model(settings)
    spec = make_spec(port=30000)
    harness.apply(desired(1, spec))
    replica = harness.wait_state(spec["id"], "failed")
    assert "outside this node's port range 20000-20010" in replica["last_error"]


def test_drain_waits_for_in_flight_requests_then_stops(settings, harness):
    make_model(settings)
    spec = make_spec()
    harness.apply(desired(1, spec))
    pid = harness.wait_state(spec["id"], "ready")["pid"]

    answers: list[httpx.Response] = []
    request = threading.Thread(
        target=lambda: answers.append(chat(spec["port"], spec["api_key"], fake_hold_seconds=3))
    )
    request.start()
    wait_for(
        lambda: harness.replica(spec["id"])["load"].get("num_requests_running") == 1,
        what="the held request to be counted",
    )
    removed_at = time.monotonic()
    harness.apply(desired(2))  # the replica leaves the desired state

    harness.wait_state(spec["id"], "draining")
    request.join(30)
    harness.wait_gone(spec["id"])
    stopped_after = time.monotonic() - removed_at

    assert answers and answers[0].status_code == 200  # the in-flight request finished
    assert stopped_after >= 2.5  # it waited for the request (held 3 s)
    assert not pid_alive(pid)
    assert harness.states_of(spec["id"])[-3:] == ["ready", "draining", "stopped"]


def test_drain_timeout_stops_a_replica_with_requests_still_running(settings, harness_factory):
    harness = harness_factory(with_settings(settings, drain_timeout_seconds=1.0))
    make_model(settings)
    spec = make_spec()
    harness.apply(desired(1, spec))
    pid = harness.wait_state(spec["id"], "ready")["pid"]
    request = threading.Thread(
        target=lambda: _ignore_errors(chat, spec["port"], spec["api_key"], fake_hold_seconds=60)
    )
    request.start()
    wait_for(lambda: harness.replica(spec["id"])["load"].get("num_requests_running") == 1)
    removed_at = time.monotonic()
    harness.apply(desired(2))
    harness.wait_gone(spec["id"], timeout=20)
    assert time.monotonic() - removed_at < 15
    assert not pid_alive(pid)
    request.join(10)


def test_sigkill_after_stop_timeout_and_group_sweep(settings, harness_factory):
    harness = harness_factory(with_settings(settings, stop_timeout_seconds=1.0))
    model_dir = make_model(settings, ignore_sigterm=True, spawn_child=True)
    spec = make_spec()
    harness.apply(desired(1, spec))
    pid = harness.wait_state(spec["id"], "ready")["pid"]
    children = _group_members(pid)
    assert len(children) >= 2  # the server and its "engine core"

    harness.apply(desired(2))
    harness.wait_gone(spec["id"], timeout=20)
    assert not pid_alive(pid)
    wait_for(lambda: not any(pid_alive(p) for p in children), 10, "the whole group to go")
    log_text = (settings.state_dir / "logs" / f"{spec['id']}.log").read_text()
    assert "ignoring SIGTERM" in log_text
    assert len(launches(model_dir)) == 1


def test_spec_hash_change_drains_the_old_process_then_starts_the_new(settings, harness):
    model_dir = make_model(settings)
    spec = make_spec()
    harness.apply(desired(1, spec))
    old_pid = harness.wait_state(spec["id"], "ready")["pid"]

    updated = {**spec, "spec_hash": "hash-2", "engine_args": {"max_num_seqs": 4}}
    harness.apply(desired(2, updated))
    replica = harness.wait_state(spec["id"], "ready", spec_hash="hash-2")
    assert replica["pid"] != old_pid
    assert not pid_alive(old_pid)
    assert harness.states_of(spec["id"], "hash-1")[-2:] == ["draining", "stopped"] or (
        harness.states_of(spec["id"], "hash-1")[-1] == "draining"
    )
    # The old one was reported draining before the new one was started.
    hashes = [snapshot[spec["id"]] for snapshot in harness.history if spec["id"] in snapshot]
    first_new = next(i for i, (h, _) in enumerate(hashes) if h == "hash-2")
    assert ("hash-1", "draining") in hashes[:first_new]
    new_launch = launches(model_dir)[-1]["argv"]
    assert new_launch[new_launch.index("--max-num-seqs") + 1] == "4"


def _group_members(group_id: int) -> list[int]:
    from pathlib import Path

    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except FileNotFoundError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) == group_id:
                members.append(int(entry.name))
    return members


def _ignore_errors(function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except httpx.HTTPError:
        return None
