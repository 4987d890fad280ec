"""engine.hardware, what hardware targets share: the cores split among an API's processes (share_cores), and a device
runtime's variable set once per process with the user's own setting kept (VisibleDevices)."""
from __future__ import annotations

import logging
import os

import pytest

from engine import THREAD_ENV_VARS, VisibleDevices, share_cores, usable_cores
from engine.testing import make_api

VARIABLE = "ACME_VISIBLE_UNITS"


def api(name: str = "a", env: dict[str, str] | None = None):
    return make_api({"name": name, "kind": "RealtimeAPI", "predictor": {"type": "python", "path": "p.py",
                                                                        "env": env or {}}})


@pytest.fixture(autouse=True)
def eight_cores_and_a_clean_env(monkeypatch):
    for name in (*THREAD_ENV_VARS, VARIABLE, f"ENGINE_USER_{VARIABLE}"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def test_usable_cores_are_those_of_the_affinity():
    assert usable_cores() == 8


def test_one_process_keeps_every_core_and_sets_nothing():
    assert share_cores(1) == (8, {})
    assert not any(name in os.environ for name in THREAD_ENV_VARS)


@pytest.mark.parametrize("processes, threads", [(2, 4), (3, 2), (8, 1), (16, 1)])
def test_processes_share_the_cores_through_the_thread_variables(processes, threads):
    shared, env = share_cores(processes)
    assert shared == threads
    assert env == {name: str(threads) for name in THREAD_ENV_VARS}
    assert all(os.environ[name] == str(threads) for name in THREAD_ENV_VARS)


def test_a_thread_variable_the_user_set_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads, env = share_cores(2)
    assert threads == 4 and "OMP_NUM_THREADS" not in env and os.environ["OMP_NUM_THREADS"] == "1"
    assert env["MKL_NUM_THREADS"] == "4"


def units() -> VisibleDevices:
    return VisibleDevices(VARIABLE, "units", "the Acme runtime", "Acme", logging.getLogger("engine.acme"))


def test_the_variable_is_claimed_and_the_users_setting_kept_for_the_workers(monkeypatch):
    monkeypatch.setenv(VARIABLE, "0-3")
    devices = units()
    assert devices.user_setting(api()) == "0-3"
    assert devices.claim(api(), "2") == {VARIABLE: "2"}
    assert os.environ[VARIABLE] == "2"
    assert units().user_setting(api()) == "0-3"  # a worker process, inheriting both variables


def test_the_users_setting_may_be_none_or_in_predictor_env():
    devices = units()
    assert devices.user_setting(api()) is None
    devices.claim(api(), "1")
    assert units().user_setting(api()) is None
    assert units().user_setting(api(env={VARIABLE: "5"})) == "5"


def test_a_second_claim_for_other_devices_is_warned_about_and_refused(caplog):
    devices = units()
    devices.claim(api(name="first"), "0")
    assert devices.claim(api(name="first-again"), "0") == {VARIABLE: "0"}
    with caplog.at_level(logging.WARNING, logger="engine.acme"):
        assert devices.claim(api(name="second"), "1") == {}
    assert os.environ[VARIABLE] == "0"
    assert (f"api 'second' asks for units 1, but this process already exposes {VARIABLE}=0 to another API, and the "
            "Acme runtime reads it only once per process; serve each Acme API with processes_per_replica >= 2") \
        in caplog.text
