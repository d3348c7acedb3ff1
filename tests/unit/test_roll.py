"""The roll's plan: canary alone first, then batches in inventory order."""

from __future__ import annotations

import pytest

from fleetctl.inventory import Fleet, FleetHost, UsageError
from fleetctl.roll import (
    Roll,
    RollError,
    RollHost,
    Smoke,
    batch_size,
    batches,
    gate_key,
    tag_version,
)
from tasks.settings import settings_for


def hosts(n: int) -> list[RollHost]:
    return [RollHost(f"gpu-{i}", f"10.0.0.{i}", 80, "tinyllama", "ollama/ollama:0.6.8")
            for i in range(1, n + 1)]


@pytest.mark.parametrize("n, size, plan", [
    (1, 1, [["gpu-1"]]),
    (3, 1, [["gpu-1"], ["gpu-2"], ["gpu-3"]]),
    (5, 2, [["gpu-1"], ["gpu-2", "gpu-3"], ["gpu-4", "gpu-5"]]),
    (4, 10, [["gpu-1"], ["gpu-2", "gpu-3", "gpu-4"]]),
    (0, 1, []),
])
def test_canary_first_then_batches_in_inventory_order(n, size, plan):
    assert [[h.name for h in b] for b in batches(hosts(n), size)] == plan


@pytest.mark.parametrize("text, n, size", [
    ("1", 10, 1), ("3", 10, 3), ("50%", 11, 5), ("25%", 10, 3), ("1%", 10, 1),
    ("100%", 10, 9), ("100%", 1, 1),
])
def test_batch_size_is_hosts_or_a_share_of_those_after_the_canary(text, n, size):
    assert batch_size(text, n) == size


@pytest.mark.parametrize("text", ["0", "-1", "0%", "101%", "half", "%"])
def test_a_bad_batch_size_is_refused(text):
    with pytest.raises(UsageError, match=f"--batch-size {text}: "):
        batch_size(text, 10)


def test_the_smoke_test_carries_a_key_the_hosts_gate_accepts(monkeypatch):
    monkeypatch.setenv("FLEET_KEYS", "first-key-0123456789, second-key-0123456789")
    keyed = settings_for("gpu-1", {"gpu_count": 1, "nginx_api_keys": {"env": "FLEET_KEYS"}})
    assert gate_key("gpu-1", keyed) == "first-key-0123456789"
    assert gate_key("gpu-1", settings_for("gpu-1", {"gpu_count": 1})) is None
    monkeypatch.delenv("FLEET_KEYS")
    with pytest.raises(UsageError, match="gpu-1: nginx_api_keys: environment "
                                         "variable FLEET_KEYS is not set"):
        gate_key("gpu-1", keyed)


# -- the steps of each batch ---------------------------------------------------------------

class RecordedRoll(Roll):
    """A roll whose pyinfra runs and smoke tests are recorded; FAIL = (step, host) fails."""

    def __init__(self, fail: tuple[str, str] | None = None, held: tuple[str, ...] = ()) -> None:
        lb = FleetHost("lb-1", ("lb_servers",), {}, settings_for("lb-1", {}))
        self.lines: list[str] = []  # what the roll logged
        super().__init__(Fleet("inv.py", "/inv.py", (lb,), {}), log=self.lines.append)
        self.steps: list[str] = []
        self.fail = fail
        self.held = list(held)  # what the front door holds out before the roll

    def read_held_out(self):
        return self.held

    def pyinfra(self, limit, data, step, host, deploy="deploy.py"):
        self.steps.append(f"{step} {','.join(limit)}" + (
            f" drained={','.join(data['front_door_out']) or '-'}"
            if "front_door_out" in data else "") + f" ({deploy})")
        if self.fail == (step, host):
            raise RollError(host, step, "boom")

    def running_image(self, host):
        return "ollama/ollama:0.6.5"  # what runs before the roll (hosts() roll to 0.6.8)

    def smoke(self, h):
        self.steps.append(f"smoke {h.name}" + (f" ({h.image})" if self.fail else ""))
        return Smoke("0.7.0", None, None)


def test_each_batch_pulls_while_serving_then_drains_applies_smokes_undrains():
    roll = RecordedRoll()
    assert roll.run(hosts(4), 2, rollback=False) == 0
    assert roll.steps == [
        "pull gpu-1 (tasks/pull_deploy.py)", "drain lb-1 drained=gpu-1 (deploy.py)",
        "apply gpu-1 (deploy.py)", "smoke gpu-1", "undrain lb-1 drained=- (deploy.py)",
        "pull gpu-2,gpu-3 (tasks/pull_deploy.py)", "drain lb-1 drained=gpu-2,gpu-3 (deploy.py)",
        "apply gpu-2,gpu-3 (deploy.py)", "smoke gpu-2", "smoke gpu-3",
        "undrain lb-1 drained=- (deploy.py)",
        "pull gpu-4 (tasks/pull_deploy.py)", "drain lb-1 drained=gpu-4 (deploy.py)",
        "apply gpu-4 (deploy.py)", "smoke gpu-4", "undrain lb-1 drained=- (deploy.py)"]


def test_what_the_front_door_holds_out_stays_out_through_the_roll():
    roll = RecordedRoll(held=("gpu-9",))  # another host drained by hand, or a stopped roll's
    assert roll.run(hosts(2), 1, rollback=False) == 0
    assert [s for s in roll.steps if "drained=" in s] == [
        "drain lb-1 drained=gpu-9,gpu-1 (deploy.py)", "undrain lb-1 drained=gpu-9 (deploy.py)",
        "drain lb-1 drained=gpu-9,gpu-2 (deploy.py)", "undrain lb-1 drained=gpu-9 (deploy.py)"]


def test_a_failed_pull_stops_the_roll_before_any_drain():
    roll = RecordedRoll(fail=("pull", "gpu-2"))
    assert roll.run(hosts(3), 1, rollback=False) == 1
    assert roll.steps[-2:] == ["undrain lb-1 drained=- (deploy.py)",
                               "pull gpu-2 (tasks/pull_deploy.py)"]
    assert roll.lines[-1] == ("roll stopped: gpu-2 failed at step 'pull': boom. Nothing of this "
                         "batch was drained or changed; untouched: gpu-2, gpu-3; done: gpu-1. "
                         "Fix the image, then roll again.")


def test_a_failed_batch_stays_out_whole_and_is_named_with_its_roll_back():
    roll = RecordedRoll(fail=("apply", "gpu-2"))
    assert roll.run(hosts(4), 2, rollback=False) == 1
    assert roll.steps[-1] == "apply gpu-2,gpu-3 (deploy.py)"  # no undrain after it
    assert roll.lines[-1] == (
        "roll stopped: gpu-2 failed at step 'apply': boom. gpu-2, gpu-3 stay out of the front "
        "door; untouched: gpu-4; done: gpu-1. Roll back: ollama-fleet inv.py roll -y "
        "--limit gpu-2 --limit gpu-3 --data ollama_image=ollama/ollama:0.6.5")


def test_a_rollback_smoke_tests_the_previous_image_and_puts_the_host_back():
    roll = RecordedRoll(fail=("apply", "gpu-1"))
    assert roll.run(hosts(3), 1, rollback=True) == 1
    assert roll.steps == [
        "pull gpu-1 (tasks/pull_deploy.py)", "drain lb-1 drained=gpu-1 (deploy.py)",
        "apply gpu-1 (deploy.py)", "rollback gpu-1 (deploy.py)",
        "smoke gpu-1 (ollama/ollama:0.6.5)",  # the image it runs again, not the failed one
        "undrain after rollback lb-1 drained=- (deploy.py)"]
    assert roll.lines[-1] == ("roll stopped: gpu-1 failed at step 'apply': boom. Rolled back, in "
                         "the front door again: gpu-1; untouched: gpu-2, gpu-3; done: none.")


@pytest.mark.parametrize("image, version", [
    ("ollama/ollama:0.7.0", "0.7.0"), ("ollama/ollama:v0.7.0", "0.7.0"),
    ("ollama/ollama:0.7.0-rocm", "0.7.0"), ("ollama/ollama:0.7.0-rc1", "0.7.0-rc1"),
    ("registry.example.com:5000/ollama/ollama:0.12.3", "0.12.3"),
    ("ollama/ollama:0.7.0@sha256:" + "a" * 64, "0.7.0"),
    ("ollama/ollama:latest", None), ("ollama/ollama", None), ("registry:5000/ollama", None),
    ("ollama/ollama:rocm", None),
])
def test_the_version_an_image_tag_names(image, version):
    assert tag_version(image) == version


def test_the_smoke_test_refuses_a_version_other_than_the_tags_and_reports_the_load():
    import http.server
    import json
    import threading

    class Ollama(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the standard library's name)
            body = json.dumps({"version": "0.6.8"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            body = (b'{"response":"hi","done":false}\n'
                    b'{"response":"","done":true,"load_duration":1500000000}\n')
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ollama)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        roll = Roll(Fleet("inv.py", "/inv.py", (), {}), log=lambda line: None)
        old = RollHost("gpu-1", "127.0.0.1", port, None, "ollama/ollama:0.6.8")
        assert roll.smoke(old) == Smoke("0.6.8", None, None)
        new = RollHost("gpu-1", "127.0.0.1", port, None, "ollama/ollama:0.7.0")
        with pytest.raises(RollError, match="gpu-1: smoke: answers version 0.6.8, but its "
                                            "image ollama/ollama:0.7.0 is 0.7.0"):
            roll.smoke(new)
        # the model's load time, as Ollama reports it, goes into the roll's line
        smoked = roll.smoke(RollHost("gpu-1", "127.0.0.1", port, "tinyllama", "ollama/ollama"))
        assert str(smoked) == "version 0.6.8, tinyllama loaded in 1.50 s"
    finally:
        server.shutdown()
        server.server_close()
