"""The gate: only nginx answers, TLS verified against the lab's CA, API keys (and their
rotation by a re-run, without cutting a stream), admin endpoints, rate limit, body cap,
least-privilege containers with rotated logs.

One lab (a GPU host, a CPU host, a front door); the gate is on the front door, set
through an inventory that adds its knobs to lb_servers, as an operator's would; the
GPU servers have no knob of the gate set: behind a front door their nginx lets only it
(and loopback) call the API by default.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import running_lab
from tests.labfleet import REPO, lab_cli, poll

pytestmark = pytest.mark.lab

NAME = "fleetlab-gate"
# Keys as the gate takes them: 32 characters at least, letter case counting.
ALICE = "alice-key-0123456789abcdefGHIJKLMN"
BOB = "bob-key-0123456789abcdefGHIJKLMNOP"
CAROL = "carol-key-0123456789abcdefGHIJKLMN"
ADMIN = "admin-key-0123456789abcdefGHIJKLMN"
ADMIN_NEXT = "admin-next-key-0123456789abcdefGHIJ"
GPU_SERVERS = ("gpu-1", "cpu-1")


def write_keys(path: Path, keys: dict[str, str]) -> None:
    path.write_text("# name key\n" + "".join(f"{name} {key}\n" for name, key in keys.items()))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    secrets = tmp_path_factory.mktemp("gate")
    with running_lab(NAME, "--gpu-hosts", "1", "--gpus-per-host", "1", "--cpu-hosts", "1",
                     "--lb-hosts", "1", "--registry-port", "5059",
                     "--model-scale", "0.1") as lab:
        tls = json.loads(lab_cli("cert", "lb-1", name=NAME).stdout)
        write_keys(secrets / "keys", {"alice": ALICE, "bob": BOB})
        write_keys(secrets / "admin", {"ops": ADMIN})
        gate = {"nginx_tls": "files", "nginx_tls_cert": tls["cert"], "nginx_tls_key": tls["key"],
                "nginx_api_keys": {"file": str(secrets / "keys")},
                "nginx_admin_keys": {"file": str(secrets / "admin")},
                "nginx_rate_limit": "5r/s", "nginx_rate_burst": 5, "nginx_max_body": "1m"}
        # the operator's inventory: the lab's, with the gate's knobs on the front door
        secure = REPO / "inventory" / f"lab-{NAME}-secure.py"
        secure.write_text(
            "import runpy\n"
            f"_lab = runpy.run_path({lab.inventory!r})\n"
            "gpu_servers = _lab['gpu_servers']\n"
            f"lb_servers = [(n, {{**d, **{gate!r}}}) for n, d in _lab['lb_servers']]\n")
        lab.secure_inventory = str(secure)
        lab.secrets = secrets
        lab.ca = tls["ca"]
        try:
            proc = lab.pyinfra("deploy.py", inventory=lab.secure_inventory)
            assert proc.returncode == 0, proc.output[-4000:]
            yield lab
        finally:
            secure.unlink(missing_ok=True)


def https(fleet) -> str:
    return f"https://{fleet.host('lb-1')['address']}"


def client(fleet, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=https(fleet), verify=ssl.create_default_context(cafile=fleet.ca),
                        headers=headers, timeout=60)


def test_only_nginx_answers_from_another_host(fleet):
    for target, other in (("gpu-1", "cpu-1"), ("cpu-1", "lb-1")):
        address = fleet.host(target)["address"]
        status, _, _ = fleet.ssh(other, f"curl -sS -m 5 -o /dev/null http://{address}:11434/",
                                 check=False)
        assert status != 0, f"{target}'s Ollama port answers from {other}"
        _, out, _ = fleet.ssh(other, f"curl -sS -m 5 http://{address}/health")
        assert json.loads(out) == {"status": "ok"}
        # on the host itself the instance answers on loopback
        _, out, _ = fleet.ssh(target, "curl -sS -m 5 http://127.0.0.1:11434/api/version")
        assert "version" in json.loads(out)
    # the GPU servers' API answers the front door only, by default: the fleet's one entry
    gpu = fleet.host("gpu-1")["address"]
    _, out, _ = fleet.ssh("cpu-1", f"curl -sS -m 5 -w ' %{{http_code}}' http://{gpu}/api/version")
    assert out.endswith(" 403") and "not allowed from this address" in out, out
    _, out, _ = fleet.ssh("lb-1", f"curl -sS -m 5 http://{gpu}/api/version")
    assert "version" in json.loads(out)


def test_a_request_that_names_the_fleet_by_dns_is_served(fleet):
    """Ollama on loopback refuses a Host that is not local (403); clients use DNS names."""
    name = {"Host": "llm.example.com"}
    with client(fleet, ALICE) as c:  # through the front door, over TLS
        answer = c.get("/api/tags", headers=name)
        assert answer.status_code == 200, answer.text
        assert "tinyllama:latest" in [m["name"] for m in answer.json()["models"]]
    gpu = fleet.host("gpu-1")["address"]  # straight to a GPU host's nginx, from the front door
    _, out, _ = fleet.ssh("lb-1", f"curl -sS -m 10 -w ' %{{http_code}}' "
                                  f"-H 'Host: gpu-1.fleet.example.com' http://{gpu}/api/version")
    assert out.endswith(" 200"), out


def test_official_clients_call_the_front_door_by_name_over_tls(fleet):
    """`https://llm.<lab>.test`: the lab's DNS name of the front door, its certificate
    verified against the lab's CA, a user's key (tests/lab/clients.py)."""
    name = f"llm.{NAME}.test"
    proc = fleet.by_name(sys.executable, "-m", "tests.lab.clients", f"https://{name}",
                         "--model", "tinyllama", "--ca", fleet.ca, "--key", ALICE, check=False)
    answer = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    assert proc.returncode == 0, proc.output[-3000:]
    assert answer.pop("address") == fleet.host("lb-1")["address"]
    assert set(answer.values()) == {"ok"} and len(answer) == 6, answer


def test_tls_is_verified_against_the_lab_ca_and_http_redirects(fleet):
    with client(fleet) as c:
        assert c.get("/health").json() == {"status": "ok"}
    with pytest.raises(httpx.ConnectError):  # an unknown CA is refused by the client
        httpx.get(f"{https(fleet)}/health", timeout=10)
    plain = httpx.post(f"http://{fleet.host('lb-1')['address']}/api/generate", timeout=10)
    assert plain.status_code == 308
    assert plain.headers["location"] == f"{https(fleet)}/api/generate"


def test_no_key_or_a_wrong_key_gets_401_and_a_valid_key_streams(fleet):
    # a key in another letter case is another key (nginx's maps alone would take it)
    for key in (None, "not-a-key-0123456789abcdef", ALICE.upper(), ALICE.swapcase()):
        with client(fleet, key) as c:
            answer = c.post("/api/generate", json={"model": "tinyllama", "prompt": "hi"})
            assert answer.status_code == 401, answer.text
            assert answer.headers["www-authenticate"].startswith("Bearer")
            assert "error" in answer.json()
    with client(fleet, ALICE) as c:
        with c.stream("POST", "/api/generate",
                      json={"model": "tinyllama", "prompt": "lab:tokens=20 hi"}) as answer:
            assert answer.status_code == 200
            lines = [json.loads(line) for line in answer.iter_lines() if line]
    assert len(lines) > 10 and lines[-1]["done"] is True


def test_a_key_in_anthropics_x_api_key_header_is_a_key_too(fleet):
    """Anthropic's clients send their key as `x-api-key`: the gate reads it as a bearer key
    (a wrong one is refused like any wrong key; admin endpoints stay closed to a user key)."""
    with httpx.Client(base_url=https(fleet), verify=ssl.create_default_context(
            cafile=fleet.ca), timeout=60) as c:
        assert c.get("/api/tags", headers={"x-api-key": BOB}).status_code == 200
        wrong = c.get("/api/tags", headers={"x-api-key": "not-a-key-0123456789abcdef"})
        assert wrong.status_code == 401, wrong.text
        time.sleep(1)  # wrong keys count against this address: pacing
        wrong = c.get("/api/tags", headers={"x-api-key": BOB.upper()})
        assert wrong.status_code == 401, wrong.text
        refused = c.post("/api/pull", json={"model": "x"}, headers={"x-api-key": BOB})
        assert refused.status_code == 403, refused.text


def test_admin_endpoints_need_an_admin_key(fleet):
    body = {"model": "no-such-model:latest"}
    with client(fleet, ALICE) as c:
        refused = c.request("DELETE", "/api/delete", json=body)
        assert refused.status_code == 403, refused.text
        assert c.post("/api/pull", json=body).status_code == 403
        # not on the inference list: newer Ollama's account endpoints, case variants, tricks
        for path in ("/api/me", "/api/signout", "/api/user/keys", "/API/pull",
                     "/api/generate/../pull", "/api/tags/x"):
            time.sleep(0.25)  # refused requests count against alice's 5 a second: pacing
            assert c.post(path, json=body).status_code == 403, path
        assert c.get("/api/tags").status_code == 200  # and inference still is
        assert c.get("/").status_code == 200
    with httpx.Client(base_url=https(fleet), verify=ssl.create_default_context(
            cafile=fleet.ca), timeout=30) as anonymous:
        answer = anonymous.get("/health")
        assert "server" not in answer.headers or answer.headers["server"] == "nginx"
        assert answer.headers["strict-transport-security"].startswith("max-age=")
    with client(fleet, ADMIN) as c:
        # past the gate, the front door keeps models the inventory's: an admin call goes
        # to no host unless it names one
        unnamed = c.request("DELETE", "/api/delete", json=body)
        assert unnamed.status_code == 403, unnamed.text
        assert unnamed.json()["error"].startswith("models are managed by the inventory")
        # named: let through to that host, whose Ollama answers the model does not exist
        passed = c.request("DELETE", "/api/delete", json=body,
                           headers={"X-Fleet-Host": "gpu-1"})
        assert passed.status_code == 404 and "not found" in passed.json()["error"], passed.text
    # the model the fleet serves is still there
    _, out, _ = fleet.ssh("gpu-1", "curl -sS http://127.0.0.1:11434/api/tags")
    assert "tinyllama:latest" in [m["name"] for m in json.loads(out)["models"]]


def nginx_log_lines(fleet, host: str, marker: str) -> list[str]:
    """The lines of HOST's nginx access log (its container's output) that hold MARKER."""
    _, out, err = fleet.ssh(host, "docker logs ollama-nginx")
    return [line for line in (out + err).splitlines() if marker in line]


def test_keys_stay_at_the_front_door_and_the_hosts_get_the_clients_name(fleet):
    """The LAN between the front door and the GPU hosts is plain HTTP: no key crosses it.
    What a host's nginx saw is in its access log (tasks/steps/gate.py: the caller's name,
    and whether a credential came, never the credential): from the front door, the name of
    the key the gate matched and no credential, whatever header the client sent."""
    marker = f"fleet-lab-keys-stay-{time.time_ns()}"
    # a client cannot name itself to the hosts either
    headers = {"User-Agent": marker, "X-Ollama-Fleet-Client": "ops"}
    body = {"model": "tinyllama", "prompt": "hi", "stream": False}
    with client(fleet, ALICE) as c:  # Authorization: Bearer
        answer = c.post("/api/generate", json=body, headers=headers)
        assert answer.status_code == 200, answer.text
    with client(fleet) as c:  # Anthropic's x-api-key
        answer = c.post("/api/generate", json=body, headers={**headers, "x-api-key": ALICE})
        assert answer.status_code == 200, answer.text

    def logged() -> list[str] | None:
        found = [line for host in GPU_SERVERS for line in nginx_log_lines(fleet, host, marker)]
        return found if len(found) >= 2 else None

    lines = poll(logged, 30, what="the hosts' nginx logged both requests")
    front = fleet.host("lb-1")["address"]
    assert len(lines) == 2, lines
    for line in lines:
        assert line.startswith(f"{front} - alice ["), line
        assert line.endswith(" credential=-"), line  # no Authorization, no x-api-key
        assert ALICE not in line
    # the field does tell: the same host's nginx, asked by the front door's address with a
    # key in Authorization, logs that one came
    probe = f"fleet-lab-keys-probe-{time.time_ns()}"
    gpu = fleet.host("gpu-1")["address"]
    fleet.ssh("lb-1", f"curl -sS -m 10 -o /dev/null -A {probe} "
                      f"-H 'Authorization: Bearer {ALICE}' http://{gpu}/api/version")
    sent = poll(lambda: nginx_log_lines(fleet, "gpu-1", probe) or None, 30,
                what="gpu-1's nginx logged the probe")
    assert sent[-1].endswith(" credential=sent"), sent


def test_a_request_that_did_not_come_through_a_front_door_is_refused(fleet):
    """A GPU host takes the client's name from a front door's address only: another host
    of the lab that sends a valid key and names a client is refused before either counts."""
    gpu = fleet.host("gpu-1")["address"]
    _, out, _ = fleet.ssh("cpu-1", f"curl -sS -m 5 -w ' %{{http_code}}' "
                                   f"-H 'Authorization: Bearer {ALICE}' "
                                   f"-H 'X-Ollama-Fleet-Client: alice' http://{gpu}/api/version")
    assert out.endswith(" 403") and "not allowed from this address" in out, out


def test_a_burst_over_the_limit_gets_429_while_others_are_served(fleet):
    codes: list[int] = []

    def burst() -> None:
        with client(fleet, BOB) as c:
            for _ in range(40):
                codes.append(c.get("/api/version").status_code)

    thread = threading.Thread(target=burst)
    thread.start()
    others: list[int] = []
    with client(fleet, ALICE) as c:
        while thread.is_alive() and len(others) < 200:
            others.append(c.get("/api/version").status_code)
            time.sleep(0.25)  # alice stays under 5 requests a second: pacing, not syncing
    thread.join(timeout=60)
    assert 429 in codes and 200 in codes, codes
    assert others and set(others) == {200}, others
    with client(fleet, BOB) as c:
        limited = poll(lambda: (r := c.get("/api/version")).status_code == 200 and r, 10,
                       what="bob served again once the burst is over")
        assert limited.json()["version"]


def test_tls_offers_forward_secret_suites_only(fleet):
    target = f"{fleet.host('lb-1')['address']}:443"

    def handshake(cipher: str) -> int:
        return subprocess.run(["openssl", "s_client", "-connect", target, "-tls1_2",
                               "-cipher", cipher, "-CAfile", fleet.ca],
                              stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=30).returncode

    assert handshake("ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256") == 0
    for static_rsa in ("AES128-GCM-SHA256", "AES256-SHA", "AES128-SHA256"):
        assert handshake(static_rsa) != 0, static_rsa


def test_request_body_is_capped(fleet):
    with client(fleet, ALICE) as c:
        answer = c.post("/api/generate", content=b"x" * (2 << 20))
    assert answer.status_code == 413


def test_key_rotation_by_rerun_cuts_no_stream(fleet):
    result: dict = {}

    def stream() -> None:
        with client(fleet, ALICE) as c, c.stream(
                "POST", "/api/generate",
                json={"model": "tinyllama", "prompt": "lab:tokens=250 a long answer"}) as answer:
            result["status"] = answer.status_code
            result["lines"] = [json.loads(line) for line in answer.iter_lines() if line]

    thread = threading.Thread(target=stream)
    thread.start()
    poll(lambda: "status" in result, 30, what="the stream started")
    write_keys(fleet.secrets / "keys", {"bob": BOB, "carol": CAROL})  # alice's key retired
    write_keys(fleet.secrets / "admin", {"ops": ADMIN, "ops-next": ADMIN_NEXT})  # admin too
    tls_keys = [fleet.ssh("lb-1", "cat /opt/ollama-front/nginx/tls/key.pem")[1]]
    tls_keys.append(Path(json.loads(lab_cli("cert", "lb-1", name=NAME).stdout)["key"]).read_text())
    assert tls_keys[0] != tls_keys[1]  # the TLS key rotated too (the same CA signs it)
    # --diff, as the README recommends: no key, old or new, may appear in the output
    proc = fleet.pyinfra("deploy.py", "--diff", inventory=fleet.secure_inventory,
                         limit="lb_servers")
    thread.join(timeout=120)
    assert proc.returncode == 0, proc.output[-3000:]
    for key in (ALICE, BOB, CAROL, ADMIN, ADMIN_NEXT):
        assert key not in proc.output, "a key was shown by --diff"
    for pem in tls_keys:  # no line of the private key, old or new
        body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
        assert not any(line in proc.output for line in body), "--diff showed the TLS key"
    _, served, _ = fleet.ssh("lb-1", "cat /opt/ollama-front/nginx/tls/key.pem")
    assert served == tls_keys[1]
    assert result["status"] == 200 and result["lines"][-1]["done"] is True, result
    assert len(result["lines"]) > 200
    with client(fleet, ALICE) as c:
        assert c.get("/api/version").status_code == 401
    for key in (BOB, CAROL):
        with client(fleet, key) as c:
            assert c.get("/api/version").status_code == 200
    with client(fleet, ADMIN_NEXT) as c:  # the new admin key is in force
        passed = c.request("DELETE", "/api/delete", json={"model": "no-such-model"},
                           headers={"X-Fleet-Host": "gpu-1"})
        assert passed.status_code == 404 and "not found" in passed.json()["error"], passed.text
    # the keys file is root's alone, and the front door was reloaded, not restarted
    _, mode, _ = fleet.ssh("lb-1", "stat -c %a /opt/ollama-front/nginx/api-keys.map")
    assert mode.strip() == "600"
    assert "Front door running (reloaded, old requests let finish)" in proc.output


def test_containers_run_with_least_privilege_and_rotated_logs(fleet):
    for host in fleet.hosts():
        _, names, _ = fleet.ssh(host["name"], "docker ps --format '{{.Names}}'")
        assert names.split(), f"{host['name']} runs no container"
        for name in names.split():
            _, out, _ = fleet.ssh(host["name"], f"docker inspect {name}")
            config = json.loads(out)[0]["HostConfig"]
            where = f"{host['name']}/{name}"
            assert config["LogConfig"]["Type"] == "json-file", where
            assert config["LogConfig"]["Config"].get("max-size"), where
            assert config["LogConfig"]["Config"].get("max-file"), where
            assert not config["Privileged"], where
            assert "no-new-privileges:true" in (config["SecurityOpt"] or []), where
            assert config["ReadonlyRootfs"], where
            assert "ALL" in (config["CapDrop"] or []), where
            if name.startswith("ollama-") and name != "ollama-front" and "nginx" not in name:
                assert not config["CapAdd"], where



SECRETS = ("api-keys.map", "admin-keys.map", "key.pem")


def test_secrets_are_never_readable_by_others_while_they_are_written(fleet):
    """The front door's keys and TLS key written anew, watched all the while: every
    file with a secret in it is root's alone, or inside a directory only root enters."""
    front = "/opt/ollama-front"
    fleet.ssh("lb-1", f"rm -rf {front}/.staged {front}/nginx/api-keys.map "
                      f"{front}/nginx/admin-keys.map {front}/nginx/tls/key.pem")
    # the watcher stops by itself after 300 s at the latest
    fleet.ssh("lb-1", "touch /tmp/watching; (end=$(($(date +%s) + 300)); "
                      "while [ -e /tmp/watching ] && [ $(date +%s) -lt $end ]; do "
                      f"find {front} -printf '%m %y %p\\n'; done | sort -u > /tmp/watch.log; "
                      "rm -f /tmp/watching.done; touch /tmp/watching.done) "
                      "</dev/null >/dev/null 2>&1 &")
    try:
        proc = fleet.pyinfra("deploy.py", inventory=fleet.secure_inventory, limit="lb_servers")
    finally:
        fleet.ssh("lb-1", "rm -f /tmp/watching")
    assert proc.returncode == 0, proc.output[-3000:]
    poll(lambda: fleet.ssh("lb-1", "test -e /tmp/watching.done", check=False)[0] == 0, 60,
         what="the watcher's log")
    seen = [line.split(" ", 2) for line in fleet.ssh("lb-1", "cat /tmp/watch.log")[1].splitlines()]
    dirs: dict[str, set[str]] = {}
    for mode, kind, path in seen:
        if kind == "d":
            dirs.setdefault(path, set()).add(mode)
    secret = [(mode, path) for mode, kind, path in seen if kind == "f"
              and Path(path).name.split(".upload")[0].removesuffix(".new") in SECRETS]
    assert {Path(p).name for _, p in secret} >= set(SECRETS), seen[:40]  # they were seen
    for mode, path in secret:
        if int(mode, 8) & 0o077 == 0:
            continue
        fenced = [d for d in dirs if path.startswith(d + "/") and dirs[d] == {"700"}]
        assert fenced, f"{path} was mode {mode} where others could reach it"


def test_guessing_keys_gets_429s_and_a_slow_client_is_closed(fleet):
    """Last in the module: it spends this machine's allowance of wrong keys."""
    codes: list[int] = []
    with client(fleet, "guess-0123456789abcdef") as c:
        for n in range(60):  # a burst of wrong keys from one address
            codes.append(c.get("/api/version", headers={
                "Authorization": f"Bearer guess-{n:04d}-0123456789abcdef"}).status_code)
    assert set(codes) == {401, 429} and codes[:5] == [401] * 5, codes
    assert codes.count(429) >= 40, codes  # 1 a second and a burst of 10 get through
    with client(fleet, BOB) as c:  # a valid key (after the rotation above) is not slowed
        assert c.get("/api/version").status_code == 200
    # a client that never finishes its request headers is closed, not waited for
    address = fleet.host("lb-1")["address"]
    with socket.create_connection((address, 443), timeout=30) as raw:
        tls = ssl.create_default_context(cafile=fleet.ca).wrap_socket(raw,
                                                                      server_hostname=address)
        tls.sendall(b"GET /api/version HTTP/1.1\r\nHost: " + address.encode() + b"\r\n")
        started = time.monotonic()
        closed = b""
        try:
            closed = tls.recv(1024)  # nginx closes (or answers 408) after client_header_timeout
        except (ConnectionResetError, ssl.SSLError):
            pass
        assert not closed or b" 408 " in closed.split(b"\r\n")[0], closed
        assert time.monotonic() - started < 25
