"""Lab stand-in for the ``ollama`` binary (server and CLI).

No image registry is reachable from the lab, so the fleet images carry this
stdlib-only package (``/usr/lib/ollama/standin``, run by the launcher
``/usr/bin/ollama``: lab/ollama/ollama.py) instead of the real Go binary.
It follows upstream Ollama's documented REST API and CLI (docs/api.md,
server/routes.go, types/model/name.go, server/images.go, server/download.go of
the 0.6 series) closely enough that code tested against it also works against
real Ollama: same routes, field names, status codes, error texts, model-name
rules, on-disk store layout and pull protocol. Inference is fake: replies are
deterministic words derived from the prompt and embeddings are unit vectors
derived from a hash of the input.

The OpenAI-compatible routes (``/v1/chat/completions``, ``/v1/completions``,
``/v1/embeddings``, ``/v1/models``, ``/v1/models/{model}``) work as upstream's
middleware in openai/openai.go (0.7 series) does: the OpenAI request is translated
into the native one, the native handler runs unchanged (model lookup, load,
keep-alive, tokens), and its answer is translated back, streamed as Server-Sent
Events when asked, errors as ``{"error": {"message", "type", "param", "code"}}``.

Images of 0.32.0 and later behave as v0.32.15 where it differs (releases.py): its extra
routes (``/api/status``, ``/api/me``, ``/api/signout``, ``/api/experimental/web_search``,
``web_fetch`` and ``model-recommendations``, ``/v1/responses``, ``/v1/messages``,
``/v1/audio/transcriptions``), the cloud passthrough of ``:cloud``/``-cloud`` models to
ollama.com unless OLLAMA_NO_CLOUD (server/cloud_proxy.go), /api/tags per manifest
(model_list_cache.go), the VRAM-tier default context, GPUs left out that no CUDA build
of the image supports, the registry's own manifest bytes stored by a pull.

Commands (as real ``ollama``)::

    ollama serve                   HTTP server on $OLLAMA_HOST
    ollama list | ls               NAME ID SIZE MODIFIED table (also the container healthcheck)
    ollama ps                      NAME ID SIZE PROCESSOR UNTIL table
    ollama pull [--insecure] NAME  progress on stderr, "Error: ..." and exit 1 on failure
    ollama rm NAME...              unload, then delete
    ollama cp SRC DST | show NAME | stop NAME | run NAME [PROMPT]
    ollama --version | -v          "ollama version is X" (warnings when no server answers)

Environment read with upstream's names and semantics:

    OLLAMA_HOST               listen / connect address, ``host:port``, ``:port`` or
                              ``http://host:port``; default 127.0.0.1:11434
    OLLAMA_MODELS             store directory; default ~/.ollama/models
    OLLAMA_KEEP_ALIVE         default keep-alive (5m; Go durations or seconds; <0 = forever)
    OLLAMA_NUM_PARALLEL       concurrent requests per loaded model (default 1; others wait)
    OLLAMA_MAX_QUEUE          waiting requests before 503 "server busy" (default 512)
    OLLAMA_MAX_LOADED_MODELS  loaded models before idle ones are evicted (default 3 per GPU)
    OLLAMA_NOPRUNE            when unset, unreferenced blobs (and -partial files) are
                              removed at startup and after a pull replaces a model
    OLLAMA_DEBUG              debug logging
    OLLAMA_ORIGINS            extra allowed CORS origins
    OLLAMA_NO_CLOUD           (0.32) refuse every cloud request (403 "ollama cloud is disabled")
    OLLAMA_CLOUD_BASE_URL     (0.32) the cloud's address: a loopback override only (release build)
    OLLAMA_CONTEXT_LENGTH     (0.32) default context instead of the VRAM tier
    NVIDIA_VISIBLE_DEVICES    set (not empty/void/none): GPU discovery finds the container's
                              GPUs and loaded models report size_vram=size, unless CUDA
                              fails to initialise (see /etc/fleetlab/cuda.json below)

Lab-only settings (set by the lab's image recipe, never by deploy files):

    OLLAMA_LAB_VERSION        version reported by /api/version and --version; default is
                              the content of /usr/lib/ollama/lab-version, else "0.0.0";
                              behaviours that changed between releases follow it (the
                              0.9 think check, the 0.18 OpenAI error types)
    OLLAMA_LAB_UNHEALTHY      "1" (or the file /usr/lib/ollama/lab-unhealthy existing):
                              the server listens but answers every request with HTTP 500
                              {"error":"lab: this build is deliberately unhealthy"}, so
                              ``ollama list`` fails and the instance never becomes healthy
    /usr/lib/ollama/lab-exit-at-start   (file) ``serve`` fails before it listens, as a
                              fatal start error does: ``Error: ...`` on stderr, exit 1
    /usr/lib/ollama/lab-crash-after     (file holding seconds) ``serve`` binds its port,
                              then panics that many seconds later in GPU discovery, before
                              it answers anything, as a Go program does: a ``panic: ...``
                              line, a goroutine trace, exit status 2
    OLLAMA_LAB_REGISTRY       base URL (e.g. http://10.20.0.2:8081) used instead of
                              https://registry.ollama.ai for names on the default host
    OLLAMA_LAB_TOKEN_DELAY    seconds before each generated token (default 0.02)
    OLLAMA_LAB_CPU_SLOWDOWN   how many times slower a runner on the CPU makes each token
                              (default 10)
    SIGUSR1 / SIGUSR2         (lab only, `python -m lab fault HOST cpu` and its clear) the
                              server falls back to the CPU until its process ends: its
                              runners reload there (/api/ps size_vram 0, slow tokens) /
                              back to its GPUs
    OLLAMA_LAB_LOAD_SECONDS   seconds a model takes to load when it is not loaded yet
                              (default 0.3; reported in load_duration, as Ollama reports
                              its load); one load at a time, as Ollama's scheduler does
    OLLAMA_LAB_TOKENS         tokens per reply when options.num_predict is not given (16)
    OLLAMA_LAB_PART_SCALE     multiplies upstream's download part sizes (100 MB to 1000 MB,
                              a sixteenth of the blob; default 1, upstream's own)

Simulated GPUs (written into the container by the lab's NVIDIA hook; every path is
prefixed with $FLEETLAB_ROOT when that is set, as the NVIDIA stand-ins do):

    /etc/fleetlab/gpus.json   the container's GPUs: GPU discovery reports each one in an
                              ``inference compute`` line (name, memory)
    /etc/fleetlab/cuda.json   what cuInit answers: {"init_error": 802, ...} (no Fabric
                              Manager on an NVSwitch board) makes GPU discovery fail as
                              discover/gpu.go (v0.6.x, v0.7.x) does: the init failure is
                              logged, the server runs on CPU and every loaded model has
                              size_vram 0 ("100% CPU"). Read once, at start: a running
                              server stays on CPU until it restarts, as upstream's does.
    /run/fleetlab/nvidia-driver-loaded  the driver version (libcuda.so's name, CUDA version)
    /etc/fleetlab/live.env    the host's live view, kept by the host side: GPU_ACCESS=lost
                              once a `systemctl daemon-reload` took the container's device
                              nodes (NVIDIA/nvidia-container-toolkit#48). Read at each
                              load and unload: loaded runners keep answering; a new load
                              logs the failed GPU refresh and runs on the CPU while
                              /api/ps reports it on the GPU, as v0.6.8 does (scheduler.py);
                              FM_REQUIRED=1 with FM_RUNNING=0 (Fabric Manager dead on an
                              NVSwitch board): a new runner computes on the CPU too;
                              GPU_LOST / GPU_RESET_REQUIRED (Xid 79 / Xid 48 on a GPU): the
                              runner on that GPU aborts on a CUDA error at its next step,
                              a new one there fails to start (scheduler.py)
    /tmp/.fleetlab-gpu-usage.json   (written) the MiB the runners hold per GPU, with the
                              server's pid and start time: the host's nvidia-smi shows it

Store layout is upstream's: ``manifests/<host>/<namespace>/<model>/<tag>`` holds
the manifest as Ollama re-encodes it (json.Marshal of its Manifest struct: compact,
its own field order, unknown fields dropped; the file's sha256 is the model ID that
``/api/tags`` and ``ollama list`` show), ``blobs/sha256-<hex>`` the blobs. A pull
works as server/download.go (v0.6.8 to v0.7.1) does: HEAD the registry's blob URL
(following redirects) for the size; cut it in parts (a sixteenth, 100 MB to 1000 MB);
create ``sha256-<hex>-partial`` at its full size and one ``-partial-N`` JSON file per
part (what resumes a pull); GET the registry's blob URL following redirects only while
the host name stays the same, and take the ``Location`` of the first one that leaves
it (a 200 with no Location fails: ``http: no Location header in response``); fetch
the parts there with Range requests in parallel (6 attempts each, short backoff);
rename the partial file to ``sha256-<hex>``; verify every downloaded blob's sha256
(a mismatch removes it); write the manifest last (temp file + rename). ``/api/tags``
lists every manifest whose config blob reads, even when a layer blob is missing.

Rooms, as upstream's packages (each module imports only the ones listed above it):

    goformat       Go's time, encoding/json and format texts (format/, Go's stdlib)
    releases       which release a behaviour follows; each release's CUDA builds
    envconfig      environment variables (envconfig/) and the slog/gin log lines
    names          model names (types/model/name.go)
    cloud          cloud model names, the cloud's on/off and its requests (cloud_proxy.go)
    apierror       the error a handler answers with
    store          manifests and blobs on disk (server/images.go, manifest.go, layer.go)
    registry       the registry client: requests, redirects, network errors (server/images.go)
    download       blob downloads in parts (server/download.go)
    pull           PullModel: manifest, layers, verification (server/images.go)
    discover       GPU discovery (discover/)
    scheduler      loaded models, keep-alive, parallelism, queue (server/sched.go)
    state          the running server's store, GPUs, scheduler and settings (STATE)
    inference      fake inference and what /api/show answers
    validation     request decoding and checks (gin ShouldBindJSON + api types)
    openai_compat  the OpenAI-compatible routes' translation (openai/openai.go)
    responses      the Responses API and audio transcriptions (openai/responses.go)
    anthropic      the Anthropic Messages API (anthropic/anthropic.go)
    routes         the HTTP API: routes, CORS, allowed hosts, handlers (server/routes.go)
    server         ``ollama serve``: listener, start, reaper, signals
    cli            the CLI client and ``main`` (cmd/cmd.go)
"""
