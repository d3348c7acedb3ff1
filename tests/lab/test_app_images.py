"""The lab's application images: `redis:<tag>` (Debian's redis-server, official layout) and
the stand-in application `fleetlab/chat-app:<tag>` (lab/app/chatapp.py).

Runs on the outer Docker engine, no lab hosts: the images are built with the lab's own
build functions, then on a private network of its own this module runs the lab's model
registry and Ollama stand-in (the repository's files copied into the app base), redis
with the command an operator would give it (appendonly, on a named volume) and the app
pointed at both. The failure paths (no cache, cache down, Ollama errors) run
lab/app/chatapp.py as a local process against the same containers. Every wait is a
bounded poll; every container, the network and the volume are removed at teardown, by
label, also when setup fails half-way.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from lab import engine, images

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
CHATAPP = REPO / "lab" / "app" / "chatapp.py"
REDIS_TAG = "7"
APP_TAG = "1.0"
MODEL = "tinyllama"
OLLAMA_VERSION = "0.6.8"
REDIS_COMMAND = ["redis-server", "--appendonly", "yes", "--maxmemory", "256mb",
                 "--maxmemory-policy", "allkeys-lru"]
CHECK = ["CMD", "python3", "/usr/local/bin/chatapp.py", "--check"]
CACHE_TTL = 600
GREETING = "hello from test_app_images"
LABEL = "fleetlab.apptest"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll PREDICATE until it returns something truthy; fail after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = predicate()
        except (OSError, AssertionError, ValueError, subprocess.SubprocessError) as exc:
            value, last = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} ({last})")
        time.sleep(interval)


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}): "
                             f"{proc.stderr.strip()}")
    return proc


def http(method: str, url: str, body: dict | None = None, timeout: float = 30):
    """(status, JSON body) of one request; no proxies (container and loopback addresses)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with NO_PROXY.open(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """Containers on one private network, all labelled for removal."""

    def __init__(self) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.prefix = f"fleetlab-apptest-{self.id}"
        self.network = f"{self.prefix}-net"
        self.volume = f"{self.prefix}-redis-data"
        self.label = f"{LABEL}={self.id}"
        self.app = ""  # base URLs, set once the containers run
        self.ollama = ""

    def name(self, service: str) -> str:
        return f"{self.prefix}-{service}"

    def create_network(self) -> None:
        docker("network", "create", "--label", self.label, self.network)
        docker("volume", "create", "--label", self.label, self.volume)

    def run(self, service: str, image: str, *args: str, env: dict | None = None,
            options: tuple[str, ...] = (), files: dict[Path, str] | None = None) -> str:
        """Create SERVICE (network alias = its short name), copy FILES in, start it."""
        name = self.name(service)
        env_args = [a for k, v in (env or {}).items() for a in ("-e", f"{k}={v}")]
        docker("create", "--name", name, "--hostname", service, "--label", self.label,
               "--network", self.network, "--network-alias", service, *env_args, *options,
               image, *args)
        for src, dest in (files or {}).items():
            docker("cp", str(src), f"{name}:{dest}")
        docker("start", name)
        return name

    def ip(self, service: str) -> str:
        fmt = '{{(index .NetworkSettings.Networks "' + self.network + '").IPAddress}}'
        return wait_for(lambda: docker("inspect", "-f", fmt, self.name(service)).stdout.strip(),
                        30, f"an address for {service}")

    def exec(self, service: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return docker("exec", self.name(service), *cmd, check=False, timeout=timeout)

    def redis_cli(self, *args: str, service: str = "redis") -> str:
        proc = self.exec(service, "redis-cli", *args, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def logs(self) -> str:
        out = []
        ids = docker("ps", "-aq", "--filter", f"label={self.label}", check=False).stdout.split()
        for cid in ids:
            proc = docker("logs", "--tail", "20", cid, check=False)
            out.append(f"--- {cid}\n{proc.stdout}{proc.stderr}")
        return "\n".join(out)

    def remove(self) -> None:
        ids = docker("ps", "-aq", "--filter", f"label={self.label}", check=False).stdout.split()
        if ids:
            docker("rm", "-f", "-v", *ids, check=False)
        for kind in ("network", "volume"):
            names = docker(kind, "ls", "-q", "--filter", f"label={self.label}",
                           check=False).stdout.split()
            if names:
                docker(kind, "rm", *names, check=False)


@pytest.fixture(scope="module")
def built():
    """The lab's images, built (or found by recipe hash) the way `python -m lab up` does."""
    engine.require_engine()
    base = images.ensure_debootstrap_image(images.APP_BASE, log=lambda _: None)
    return {
        "base": base,
        "redis": images.build_redis_image(REDIS_TAG, base, log=lambda _: None),
        "app": images.build_chat_app_image(APP_TAG, base, log=lambda _: None),
    }


@pytest.fixture(scope="module")
def stack(built):
    s = Stack()
    try:
        s.create_network()
        # blobs redirected to the same server under another name, as the real registry
        # redirects to its blob store (a strict Ollama takes only such a redirect)
        s.run("registry", built["base"], "python3", "/opt/modelregistry.py",
              "--listen", "0.0.0.0:8081", "--data", "/tmp/models",
              "--catalog", "/opt/models.json", "--size-scale", "0.01",
              "--blob-url", "http://blobs:8081", options=("--network-alias", "blobs"),
              files={REPO / "lab/registry/modelregistry.py": "/opt/modelregistry.py",
                     REPO / "lab/registry/models.json": "/opt/models.json"})
        s.run("ollama", built["base"], "python3", "/usr/local/bin/ollama", "serve",
              env={"OLLAMA_HOST": "0.0.0.0:11434", "OLLAMA_LAB_VERSION": OLLAMA_VERSION,
                   "OLLAMA_LAB_REGISTRY": "http://registry:8081",
                   "OLLAMA_LAB_TOKEN_DELAY": "0"},
              # the launcher finds the package beside it, as in the checkout
              files={REPO / "lab/ollama/ollama.py": "/usr/local/bin/ollama",
                     REPO / "lab/ollama/standin": "/usr/local/bin/standin"})
        s.run("redis", built["redis"], *REDIS_COMMAND, options=("-v", f"{s.volume}:/data"))
        s.run("app", built["app"],
              env={"OLLAMA_BASE_URL": "http://ollama:11434", "OLLAMA_MODEL": MODEL,
                   "REDIS_URL": "redis://redis:6379/0", "CACHE_TTL": str(CACHE_TTL),
                   "APP_GREETING": GREETING},
              # the image's own healthcheck (Compose's ["CMD", ...] form), polled faster
              options=("--health-interval", "1s", "--health-start-period", "1s"))
        s.run("redis-auth", built["redis"], "redis-server", "--requirepass", "s3cret")
        # the model, pulled the way an operator would: `ollama pull` in the container
        ollama = ("python3", "/usr/local/bin/ollama")
        wait_for(lambda: s.exec("ollama", *ollama, "list").returncode == 0, 60,
                 "the Ollama stand-in to answer")
        pull = s.exec("ollama", *ollama, "pull", MODEL, timeout=180)
        assert pull.returncode == 0, f"ollama pull {MODEL}: {pull.stderr[-500:]}"
        s.app = f"http://{s.ip('app')}:8000"
        s.ollama = f"http://{s.ip('ollama')}:11434"
        wait_for(lambda: http("GET", f"{s.app}/health", timeout=3)[0] == 200, 60,
                 "the app's /health")
        wait_for(lambda: s.redis_cli("ping") == "PONG", 60, "redis to answer PING")
        yield s
    except BaseException:
        print(s.logs(), file=sys.stderr)
        raise
    finally:
        s.remove()


def test_redis_image_is_laid_out_like_the_official_one(built):
    config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}",
                               built["redis"]).stdout)
    assert config["Cmd"] == ["redis-server"]
    assert config["WorkingDir"] == "/data"
    assert "/data" in config["Volumes"]
    assert "6379/tcp" in config["ExposedPorts"]
    version = docker("run", "--rm", built["redis"], "redis-server", "--version").stdout
    assert version.startswith("Redis server v=")


def test_app_image_has_python_and_a_healthcheck_but_no_curl(built, stack):
    config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}",
                               built["app"]).stdout)
    assert config["Healthcheck"]["Test"] == CHECK
    assert config["Cmd"] == ["python3", "/usr/local/bin/chatapp.py"]
    assert "8000/tcp" in config["ExposedPorts"]
    assert stack.exec("app", "sh", "-c", "command -v curl").returncode != 0
    assert stack.exec("app", "sh", "-c", "command -v wget").returncode != 0
    assert stack.exec("app", "python3", "/usr/local/bin/chatapp.py", "--check").returncode == 0
    # --check really asks: wrong port, no answer, exit 1
    closed = stack.exec("app", "env", "PORT=1", "python3", "/usr/local/bin/chatapp.py",
                        "--check")
    assert closed.returncode == 1, closed
    wait_for(lambda: json.loads(docker("inspect", "-f", "{{json .State.Health.Status}}",
                                       stack.name("app")).stdout) == "healthy",
             60, "the app's healthcheck to pass")


def test_health_and_whoami(stack):
    assert http("GET", f"{stack.app}/health") == (200, {"status": "ok"})
    status, body = http("GET", f"{stack.app}/whoami")
    assert status == 200
    assert body == {"hostname": "app",
                    "env": {"OLLAMA_BASE_URL": "http://ollama:11434", "OLLAMA_MODEL": MODEL,
                            "APP_GREETING": GREETING}}


def test_ask_goes_to_ollama_once_then_comes_from_redis(stack):
    prompt = f"Why is the sky blue? ({stack.id})"
    status, first = http("POST", f"{stack.app}/ask", {"prompt": prompt})
    assert status == 200, first
    assert first["cached"] is False and first["cache"] == "miss"
    assert first["answer"].strip()
    assert first["model"] == MODEL
    assert first["ollama_version"] == OLLAMA_VERSION
    key = first["cache_key"]
    assert key.startswith("chat:") and len(key) == len("chat:") + 64

    status, second = http("POST", f"{stack.app}/ask", {"prompt": prompt})
    assert status == 200, second
    assert second["cached"] is True and second["cache"] == "hit"
    assert second["answer"] == first["answer"] and second["model"] == MODEL
    # the GET form is the same question
    status, third = http("GET", f"{stack.app}/ask?q={urllib.parse.quote(prompt)}")
    assert (status, third["cached"], third["answer"]) == (200, True, first["answer"])

    keys = stack.redis_cli("--scan", "--pattern", "chat:*").split()
    assert key in keys
    assert stack.redis_cli("GET", key) == first["answer"]
    assert 0 < int(stack.redis_cli("TTL", key)) <= CACHE_TTL
    # redis runs with the operator's command line, on all interfaces, protected mode off
    assert stack.redis_cli("CONFIG", "GET", "appendonly").split() == ["appendonly", "yes"]
    assert stack.redis_cli("CONFIG", "GET", "maxmemory-policy").split() == [
        "maxmemory-policy", "allkeys-lru"]
    assert stack.redis_cli("CONFIG", "GET", "protected-mode").split() == [
        "protected-mode", "no"]
    assert stack.redis_cli("CONFIG", "GET", "dir").split() == ["dir", "/data"]


def test_cache_survives_a_redis_restart(stack):
    prompt = f"What survives a restart? ({stack.id})"
    status, first = http("POST", f"{stack.app}/ask", {"prompt": prompt})
    assert status == 200 and first["cached"] is False, first
    key = first["cache_key"]
    docker("restart", stack.name("redis"), timeout=60)
    wait_for(lambda: stack.redis_cli("ping") == "PONG", 60, "redis to answer after restart")
    assert key in stack.redis_cli("--scan", "--pattern", "chat:*").split()
    files = stack.exec("redis", "ls", "/data/appendonlydir").stdout
    assert "appendonly.aof" in files
    status, again = http("POST", f"{stack.app}/ask", {"prompt": prompt})
    assert (status, again["cached"], again["answer"]) == (200, True, first["answer"])


def test_bad_requests(stack):
    assert http("POST", f"{stack.app}/ask", {"question": "x"})[0] == 400
    assert http("POST", f"{stack.app}/ask", {"prompt": "   "})[0] == 400
    assert http("GET", f"{stack.app}/ask")[0] == 400
    assert http("GET", f"{stack.app}/nope")[0] == 404


# ---------------------------------------------------------------------------
# lab/app/chatapp.py as a local process (this interpreter) against the containers
# ---------------------------------------------------------------------------


@pytest.fixture
def local_app():
    procs: list[subprocess.Popen] = []

    def start(**env: str) -> str:
        port = free_port()
        full = {k: v for k, v in os.environ.items()
                if k not in ("REDIS_URL", "OLLAMA_BASE_URL", "OLLAMA_MODEL", "APP_GREETING")}
        full.update(env, PORT=str(port))
        proc = subprocess.Popen([sys.executable, str(CHATAPP)], env=full,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: proc.poll() is None and http("GET", f"{url}/health", timeout=2)[0]
                 == 200, 20, "the local app to answer")
        assert subprocess.run([sys.executable, str(CHATAPP), "--check"], env=full,
                              timeout=20).returncode == 0
        return url

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_without_redis_url_it_answers_uncached(stack, local_app):
    url = local_app(OLLAMA_BASE_URL=stack.ollama, OLLAMA_MODEL=MODEL)
    for _ in range(2):
        status, body = http("POST", f"{url}/ask", {"prompt": "uncached"})
        assert status == 200, body
        assert (body["cached"], body["cache"]) == (False, "off")
        assert body["answer"] and body["ollama_version"] == OLLAMA_VERSION


def test_redis_down_still_answers_from_ollama(stack, local_app):
    url = local_app(OLLAMA_BASE_URL=stack.ollama, OLLAMA_MODEL=MODEL,
                    REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    status, body = http("POST", f"{url}/ask", {"prompt": "no cache today"})
    assert status == 200, body
    assert (body["cached"], body["cache"]) == (False, "unavailable")
    assert body["answer"]


def test_redis_password_and_database_from_the_url(stack, local_app):
    ip = stack.ip("redis-auth")
    url = local_app(OLLAMA_BASE_URL=stack.ollama, OLLAMA_MODEL=MODEL,
                    REDIS_URL=f"redis://:s3cret@{ip}:6379/3")
    first = http("POST", f"{url}/ask", {"prompt": "with a password"})[1]
    second = http("POST", f"{url}/ask", {"prompt": "with a password"})[1]
    assert (first["cached"], second["cached"]) == (False, True), (first, second)
    keys = stack.redis_cli("-a", "s3cret", "--no-auth-warning", "-n", "3", "--scan",
                           "--pattern", "chat:*", service="redis-auth").split()
    assert keys == [first["cache_key"]]
    wrong = local_app(OLLAMA_BASE_URL=stack.ollama, OLLAMA_MODEL=MODEL,
                      REDIS_URL=f"redis://:wrong@{ip}:6379/3")
    status, body = http("POST", f"{wrong}/ask", {"prompt": "with a password"})
    assert (status, body["cached"], body["cache"]) == (200, False, "unavailable")


def test_ollama_errors_are_502(stack, local_app):
    missing = local_app(OLLAMA_BASE_URL=stack.ollama, OLLAMA_MODEL="no-such-model")
    status, body = http("POST", f"{missing}/ask", {"prompt": "hello"})
    assert status == 502 and "not found" in body["error"], body
    down = local_app(OLLAMA_BASE_URL=f"http://127.0.0.1:{free_port()}", OLLAMA_MODEL=MODEL)
    status, body = http("POST", f"{down}/ask", {"prompt": "hello"})
    assert status == 502 and body["error"], body
