"""The configured models: known to the registry, downloaded once per fleet, listed by
every instance.

Guarantees:
- every model a host lacks is looked up in the registry before anything is
  downloaded anywhere; an unknown name fails that host with one line naming it;
- with fan-out (`ollama_fanout`, the default) a model crosses the internet once per
  fleet: the first gpu_servers host pulls it through Ollama, the others copy its
  blobs over the LAN from peers' nginx in doubling waves (1, 2, 4, ... receivers,
  each wave served by every host that already holds the model); a source that fails
  or dies is replaced by the next peer that holds the model, and by the registry
  when none does;
- a copied blob is written beside the store, its sha256 checked against its name,
  then moved in; the registry's manifest is written last, so a partial model never
  looks present; Ollama lists copied models without downloading them again;
- what a registry, a mirror or a peer sends is bounded before it is used
  (tasks.kit.manifests): a manifest is read to at most 1 MiB and refused past it, or when
  it nests deeper than a manifest does, lists more blobs than one has, or names a blob
  otherwise than by its sha256 and a whole number of bytes; the fan-out's download of a
  blob stops one byte past its declared size, and a source that sends more is refused
  (the file cut back) and the next one asked (Ollama's own pull is Ollama's: it checks
  every byte against the digest); each refusal is one line naming the host, the model
  and what was wrong;
- a pull that streams an `{"error": ...}` line fails (and is retried, resuming, a
  bounded number of times) even though the HTTP status was 200;
- while a model moves the host says what it receives from where, and how far it is,
  at most every few seconds; each host ends with a summary.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass

from pyinfra import host, logger
from pyinfra.api import operation
from pyinfra.api.command import FunctionCommand

from ollama_fleet.tasks.kit import modelname
from ollama_fleet.tasks.kit import store as model_store
from ollama_fleet.tasks.kit.addresses import url_host
from ollama_fleet.tasks.kit.facts import LoadedModels, OllamaModels, StoredManifests, planning
from ollama_fleet.tasks.kit.fleet import Fleet
from ollama_fleet.tasks.kit.manifests import MANIFEST_MAX_BYTES, ManifestError, manifest_layers
from ollama_fleet.tasks.kit.report import fail_command
from ollama_fleet.tasks.kit.scripts import script_command
from ollama_fleet.tasks.kit.settings import Settings

PULL_TIMEOUT_S = 6 * 3600
PULL_ATTEMPTS = 3
PROGRESS_EVERY_S = 5.0
POLL_S = 1.0
FREE_MARGIN_MIB = 1024  # left free on the store's filesystem after a model arrives
FETCH_SCRIPT = "bin/fetch-model.sh"
STAGE = ".fanout"  # beside the store's blobs/ and manifests/, and in the stack directory
MANIFEST_TYPE = ("application/vnd.docker.distribution.manifest.v2+json, "
                 "application/vnd.oci.image.manifest.v1+json")


def canonical(name: str) -> str:
    """NAME as Ollama lists it (tasks.kit.modelname): `library/x`, `registry.ollama.ai/library/x`
    and `x:latest` are all `x:latest`."""
    return modelname.canonical(name)


def manifest_path(name: str) -> str:
    """Where Ollama keeps NAME's manifest, relative to its store (models/)."""
    return f"manifests/{modelname.parse(name).manifest_path}"


def manifest_url(settings: Settings, name: str) -> str:
    """The registry URL of NAME's manifest: for Ollama's default registry the mirror
    (ollama_registry_mirror) when there is one, else ollama_registry."""
    return f"{registry_base(settings, name)}/manifests/{modelname.parse(name).tag}"


def registry_base(settings: Settings, name: str) -> str:
    """NAME's repository URL at the registry the deploy asks (`.../v2/NAMESPACE/MODEL`)."""
    parsed = modelname.parse(name)
    if is_default_registry(name):
        base = settings.ollama_registry_mirror or settings.ollama_registry
    else:
        base = f"https://{parsed.host}"
    return f"{base}/v2/{parsed.namespace}/{parsed.model}"


def is_default_registry(name: str) -> bool:
    return modelname.parse(name).host.lower() == modelname.DEFAULT_HOST


def from_mirror(settings: Settings, name: str) -> bool:
    """Whether the deploy itself fetches NAME from the operator's mirror."""
    return bool(settings.ollama_registry_mirror) and is_default_registry(name)


@dataclass(frozen=True)
class Peer:
    name: str
    address: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{url_host(self.address)}:{self.port}"


def peers(fleet: Fleet) -> list[Peer]:
    """Every gpu_servers host of FLEET that serves its store to the fleet, in inventory
    order."""
    return [Peer(m.name, m.address, m.settings.ollama_fanout_port)
            for m in fleet.gpu_servers if m.settings.ollama_fanout]


def wave_of(position: int) -> int:
    """Fan-out wave of the host at POSITION: 0 (the seed), 1, 2, 2, 3, 3, 3, 3, ..."""
    return position.bit_length()


def sources(position: int, fleet: list[Peer]) -> list[Peer]:
    """Peers to copy from, best first: the one this wave assigns (which got the model a
    wave earlier, so each wave doubles the sources), then every other peer."""
    others = [p for i, p in enumerate(fleet) if i != position]
    if position == 0:
        return others
    assigned = fleet[position - (1 << (wave_of(position) - 1))]
    return [assigned, *[p for p in others if p != assigned]]


def pull_command(address: str, port: int, model: str, stream: str) -> str:
    """POST /api/pull to the instance at ADDRESS:PORT, its stream written to the file STREAM
    as it comes, and fail on an error line or a stream that does not end in success
    (templates/models/pull.sh)."""
    return script_command("models/pull.sh", address, port, model, json.dumps({"model": model}),
                          PULL_TIMEOUT_S, stream)


def as_stored(settings: Settings, listed: dict[str, str]) -> list[str]:
    """Every configured model once, spelt as LISTED (what Ollama lists) has it when it is
    there: Ollama compares names case-insensitively but keeps a model's files under the
    case it was first pulled with, so the store's spelling is the one that names its
    files; a model not there yet keeps its configured spelling (the shortest form)."""
    stored = {modelname.parse(n).key: n for n in listed}
    return [stored.get(modelname.parse(m).key, m) for m in map(canonical, settings.all_models)]


def warm_keys(settings: Settings) -> set[str]:
    """The warm models (ollama_warm_models) as Ollama compares names."""
    return {modelname.parse(m).key for m in settings.ollama_warm_models}


def warm_as_stored(settings: Settings, listed: dict[str, str]) -> list[str]:
    """The warm models, spelt as LISTED has them (as_stored)."""
    keys = warm_keys(settings)
    return [m for m in as_stored(settings, listed) if modelname.parse(m).key in keys]


def missing_models(settings: Settings) -> tuple[list[str], dict[str, str]] | None:
    """Configured models instance 0 does not list, or lists from a damaged store, spelt as
    the store has them, and the damage (store_damage); None: Ollama does not answer."""
    port = settings.instance_ports()[0][1]
    listed = host.get_fact(OllamaModels, address=settings.local_host(), port=port)
    if listed is None:
        return None
    damaged = store_damage(settings, listed)
    return [m for m in as_stored(settings, listed) if m not in listed or m in damaged], damaged


def store_damage(settings: Settings, listed: dict[str, str] | None = None) -> dict[str, str]:
    """Configured models whose store entry is damaged, each with what is wrong: a blob its
    manifest names that is missing or not of the size the manifest says, or a manifest
    that is not one. Ollama still lists such a model (it reads the manifest, not the
    layers) and fails only when it is used; a missing manifest is no damage (the model
    is simply not there). LISTED: what instance 0 lists (read here when not given)."""
    if listed is None:
        listed = host.get_fact(OllamaModels, address=settings.local_host(),
                              port=settings.instance_ports()[0][1]) or {}
    wanted = sorted(as_stored(settings, listed))
    found = host.get_fact(StoredManifests, store=model_store.models_dir(settings),
                          manifests=[manifest_path(m) for m in wanted])
    damage = {}
    for model in wanted:
        text = found["manifests"].get(manifest_path(model))
        if text is None:
            continue
        try:
            blobs = manifest_layers(text)
        except ManifestError as exc:
            damage[model] = f"its manifest: {exc}"
            continue
        for hex_, size in blobs:
            have = found["blobs"].get(f"sha256-{hex_}")
            if have is None:
                damage[model] = f"blob sha256:{hex_[:12]} is missing"
                break
            if size and have != size:
                damage[model] = f"blob sha256:{hex_[:12]} has {have} of its {size} bytes"
                break
    return damage


def models_to_get(settings: Settings, say_damage: bool = False):
    """`missing = yield from models_to_get(settings)` in an operation: the models the host
    lacks or holds damaged (SAY_DAMAGE: and say what is damaged); or None, having said why
    there is nothing to do (noop) or failed the host (Ollama does not answer)."""
    found = missing_models(settings)
    if found is None:
        if not planning():
            yield fail_command(f"Ollama on port {settings.instance_ports()[0][1]} does not "
                               "answer /api/tags")
        return None
    missing, damaged = found
    if not missing:
        host.noop(f"{len(settings.all_models)} models present" if settings.all_models
                  else "no models configured")
        return None
    if say_damage:
        for model, problem in damaged.items():
            host.log_styled(f"{model}: damaged in the store ({problem}): getting it again",
                            fg="yellow", log_func=logger.warning)
    return missing


def staged_manifest(settings: Settings, name: str) -> str:
    return f"{settings.ollama_stack_dir}/{STAGE}/{manifest_path(name)}"


@operation()
def known_to_registry(settings: Settings):
    """
    Fetch the registry's manifest of every model the host lacks, before anything is
    downloaded anywhere; a model the registry does not know fails the host, named.

    + settings: the host's validated settings
    """
    missing = yield from models_to_get(settings, say_damage=True)
    if not missing:
        return
    for model in missing:
        yield script_command("models/registry-manifest.sh", staged_manifest(settings, model),
                             manifest_url(settings, model), model, MANIFEST_TYPE,
                             MANIFEST_MAX_BYTES)


class Mover:
    """Runs one transfer on the host in the background and reports its progress."""

    def __init__(self, state, target, settings: Settings, model: str, blobs: list[tuple[str, int]],
                 store: str) -> None:
        self.state, self.host, self.settings = state, target, settings
        self.model, self.blobs, self.store = model, blobs, store
        self.total = sum(size for _, size in blobs)
        self.job = f"{settings.ollama_stack_dir}/{STAGE}/job"

    def sh(self, command: str, timeout: int = 60) -> tuple[bool, str]:
        ok, output = self.host.run_shell_command(command, _timeout=timeout)
        return ok, "\n".join(output.stdout_lines + output.stderr_lines)

    def done_bytes(self) -> tuple[str | None, int]:
        """(exit status of the job or None while it runs, bytes of the model on disk)."""
        ok, out = self.sh(script_command("models/job-progress.sh", self.job, self.store,
                                         *(h for h, _ in self.blobs)))
        lines = out.split()
        if not ok or not lines:
            raise ConnectionError(out or "the host does not answer")
        status = None if lines[0] == "running" else lines[0]
        return status, sum(min(int(n), size) for n, (_, size) in zip(lines[1:], self.blobs,
                                                                     strict=False))

    def run(self, command: str, source: str) -> tuple[bool, str]:
        """Run COMMAND in the background until it ends (bounded); print progress."""
        q = shlex.quote
        started = time.monotonic()
        ok, out = self.sh(script_command("models/start-job.sh", self.job, command))
        if not ok:
            return False, out
        last_print, last_bytes = started, -1
        while time.monotonic() - started < PULL_TIMEOUT_S:
            time.sleep(POLL_S)
            status, done = self.done_bytes()
            if status is not None:
                _, log = self.sh(f"tail -n 3 {q(self.job)}.log")
                return status == "0", log.strip().splitlines()[-1] if log.strip() else status
            now = time.monotonic()
            if now - last_print >= PROGRESS_EVERY_S and done != last_bytes:
                percent = 100 * done / self.total if self.total else 100
                self.host.log(f"{self.model} from {source}: {mib(done)} of {mib(self.total)} "
                              f"({percent:.0f}%)")
                last_print, last_bytes = now, done
        self.sh(f"pkill -f {q(self.job)} || true")
        return False, f"no end after {PULL_TIMEOUT_S}s"


def mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


def store_dir(target, settings: Settings) -> str:
    """TARGET's Ollama store (the directory holding blobs/ and manifests/)."""
    return model_store.host_models_dir(target, settings)


def receive(state, host, settings: Settings, wanted: list[str], fleet: list[Peer],
            position: int | None) -> bool:
    """Get each model in WANTED from a peer that holds it, else from the operator's mirror
    (ollama_registry_mirror), else through Ollama's own pull from the registry."""
    port = settings.instance_ports()[0][1]
    summary = []
    try:
        store = store_dir(host, settings)
        for model in wanted:
            ok, text = host.run_shell_command(
                f"cat {shlex.quote(staged_manifest(settings, model))}", _timeout=60)
            try:  # unreadable (not staged): no copy from peers, the registry pull below
                blobs = manifest_layers(text.stdout) if ok else []
            except ManifestError as exc:
                raise ValueError(f"{model}: the registry's manifest: {exc}") from None
            mover = Mover(state, host, settings, model, blobs, store)
            if blobs:  # room for what is missing, before any byte of it is downloaded
                ok, detail = mover.sh(script_command(
                    "models/free-space.sh", store, model, FREE_MARGIN_MIB,
                    *(f"{h}:{size}" for h, size in blobs)))
                if not ok:
                    raise ValueError(detail.strip() or f"{model}: free space unknown")
            started = time.monotonic()
            got_from = copied(host, mover, settings, position, fleet) if blobs else None
            if not got_from and blobs:  # Ollama's pull would keep a damaged blob as done
                ok, detail = mover.sh(script_command(
                    "models/drop-damaged.sh", store, *(f"{h}:{size}" for h, size in blobs)))
                if not ok:
                    raise ValueError(f"{model}: {detail.strip()}")
            for attempt in range(1, PULL_ATTEMPTS + 1):
                if got_from:
                    break
                ok, detail = mover.run(pull_command(settings.local_host(), port, model,
                                                    f"{mover.job}.stream"),
                                       "the registry")
                if ok:
                    got_from = "the registry"
                    break
                host.log(f"{model} from the registry, attempt {attempt} of {PULL_ATTEMPTS} "
                         f"failed: {detail}")
            if not got_from:
                host.log_styled(f"{model}: not received from any peer, mirror nor the registry",
                                fg="red", log_func=logger.error)
                return False
            summary.append(f"{model} {mib(mover.total)} from {got_from} in "
                           f"{time.monotonic() - started:.1f}s")
    except (ConnectionError, OSError, ValueError) as exc:
        host.log_styled(f"models: {exc}", fg="red", log_func=logger.error)
        return False
    host.log(f"models received: {'; '.join(summary)}")
    return True


def copied(host, mover: Mover, settings: Settings, position: int | None,
           fleet: list[Peer]) -> str | None:
    """Copy MOVER's model with the fan-out fetcher: from the first peer that holds it
    (its stored manifest, so the model's ID is the same on every host), else from the
    operator's mirror (the mirror's manifest); the source it came from, or None."""
    model, q = mover.model, shlex.quote
    stack = settings.ollama_stack_dir
    peer_manifest = f"{staged_manifest(settings, model)}.peer"
    tries: list[tuple[str, str, str | None]] = [  # (source, blob URL prefix, manifest URL)
        (p.name, f"{p.url}/blobs/sha256-", f"{p.url}/{manifest_path(model)}")
        for p in (sources(position, fleet) if settings.ollama_fanout and position is not None
                  else [])]
    if from_mirror(settings, model):
        tries.append(("the mirror", f"{registry_base(settings, model)}/blobs/sha256:", None))
    for source, blob_prefix, manifest_url_ in tries:
        manifest = staged_manifest(settings, model)
        if manifest_url_:  # the peer's own manifest, fetched first: no answer, no model
            ok, text = mover.sh(script_command("models/peer-manifest.sh", peer_manifest,
                                               manifest_url_, MANIFEST_MAX_BYTES))
            if not ok:
                if text.strip():  # it answered with more than a manifest
                    host.log(f"{model} from {source}: {text.strip()}; trying the next source")
                continue
            try:
                theirs = manifest_layers(text)
            except ManifestError as exc:
                host.log(f"{model} from {source}: its manifest: {exc}; trying the next source")
                continue
            if sorted(theirs) != sorted(mover.blobs):
                host.log(f"{model} from {source}: it holds another version than the registry's; "
                         "trying the next source")
                continue
            manifest = peer_manifest
        fetch = ["sh", f"{stack}/{FETCH_SCRIPT}", mover.store, blob_prefix,
                 *(f"{h}:{size}" for h, size in mover.blobs)]
        ok, detail = mover.run(shlex.join(fetch), source)
        if ok:  # the manifest last: a model is never listed before its blobs are whole;
            # staged beside the store, not in manifests/ (Ollama would list `1b.new`)
            dest = f"{mover.store}/{manifest_path(model)}"
            new = f"{mover.store}/{STAGE}/manifest.new"
            ok, detail = mover.sh(f"umask 022 && mkdir -p {q(dest.rsplit('/', 1)[0])} "
                                  f"{q(new.rsplit('/', 1)[0])} && cp {q(manifest)} {q(new)} "
                                  f"&& mv {q(new)} {q(dest)}")
        if ok:
            return f"{source} (LAN)" if manifest_url_ else source
        host.log(f"{model} from {source} failed ({detail}); trying the next source")
    return None


@operation()
def fanned_out(settings: Settings, fleet: Fleet, wave: int):
    """
    Models the host lacks, received in its fan-out wave: copied from peers that hold them
    (verified), else pulled from the registry.

    + settings: the host's validated settings
    + fleet: the fleet (its gpu_servers are the peers, in inventory order)
    + wave: the fan-out wave this step serves (hosts of other waves have nothing to do)
    """
    fanout = peers(fleet) if settings.ollama_fanout else []
    position = next((i for i, p in enumerate(fanout) if p.name == host.name), None)
    my_wave = wave_of(position) if position is not None else 0
    if my_wave != wave:
        host.noop(f"fan-out wave {my_wave}, not {wave}")
        return
    missing = yield from models_to_get(settings)
    if not missing:
        return
    yield FunctionCommand(receive, (settings, missing, fanout, position), {})


@operation()
def listed_everywhere(settings: Settings):
    """
    Fail unless every instance lists every configured model, each whole in the store.

    + settings: the host's validated settings
    """
    if planning():
        host.noop("models are checked once they are pulled")
        return

    wanted = {canonical(m) for m in settings.all_models}
    for n, port in settings.instance_ports():
        stored = host.get_fact(OllamaModels, address=settings.local_host(), port=port) or {}
        listed = {modelname.parse(m).key for m in stored}
        missing = sorted(m for m in wanted if modelname.parse(m).key not in listed)
        if missing:
            yield fail_command(f"instance {n} (port {port}) does not list {missing}")
            return
    for model, problem in store_damage(settings).items():
        yield fail_command(f"{model}: damaged in the store ({problem})")
        return
    host.noop(f"every instance lists {len(wanted)} models")


WARM_TIMEOUT_S = 600  # one model's load: a large model from disk into GPU memory


@operation()
def kept_warm(settings: Settings):
    """
    Load every model of ollama_warm_models on every instance for good (keep_alive -1),
    where it is not loaded so already: after a start or a recreate, before the host
    serves again, so no user request pays the load (templates/models/warm.sh).

    + settings: the host's validated settings
    """
    if planning():
        host.noop("warm models are checked once the stack runs")
        return
    listed = host.get_fact(OllamaModels, address=settings.local_host(),
                              port=settings.instance_ports()[0][1]) or {}
    wanted = warm_as_stored(settings, listed)
    warming = False
    for _, port in settings.instance_ports():
        loaded = host.get_fact(LoadedModels, address=settings.local_host(), port=port) or []
        kept = {m["name"] for m in loaded if m["forever"]}
        cold = [m for m in wanted if m not in kept]
        if cold:
            warming = True
            yield script_command("models/warm.sh", settings.instance_url(port), WARM_TIMEOUT_S,
                                 -1, *cold)
    if not warming:
        host.noop(f"every instance keeps {', '.join(wanted)} loaded")


def warm_models(settings: Settings) -> None:
    """The warm models loaded on every instance (nothing when none are configured)."""
    if settings.ollama_warm_models:
        kept_warm(name="Warm models loaded on every instance", settings=settings,
                  _timeout=WARM_TIMEOUT_S * len(settings.ollama_warm_models)
                  * len(settings.instance_ports()) + 60)


def pull_models(settings: Settings, fleet: Fleet) -> None:
    """Registry check first (fleet-wide), then one wave after another (as many as FLEET's
    gpu_servers need), then the check."""
    known_to_registry(name="Every missing model known to the registry", settings=settings)
    waves = wave_of(max(len(fleet.gpu_servers) - 1, 0)) + 1
    for wave in range(waves):
        fanned_out(name=f"Models received (fan-out wave {wave})", settings=settings,
                   fleet=fleet, wave=wave, _timeout=PULL_TIMEOUT_S * (PULL_ATTEMPTS + 1) + 60)
    listed_everywhere(name="Every instance lists every model", settings=settings)
