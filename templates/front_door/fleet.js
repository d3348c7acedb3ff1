// Copied by the deploy from templates/front_door/fleet.js; edits here are overwritten.
// The front door's router, in nginx's JavaScript (njs 0.8.1 and later: js_periodic and
// js_shared_dict_zone; front.conf imports it). The fleet itself lives in front.conf's maps,
// rendered from the inventory: which hosts serve which model ($fleet_route), which host an
// admin names ($fleet_named), the hosts in rotation ($fleet_members). This only reads what
// a request asks for and hands it to the location that proxies it; it never proxies a byte
// itself, so streams stay unbuffered. It also keeps prompts in the fleet: unless ollama_allow_cloud is on
// ($fleet_allow_cloud), a request for an Ollama cloud model, or one that asks Ollama to
// search the web for it, is refused here.
//
// And it keeps the rotation: every second (js_periodic) it asks each host's nginx for its
// health agent's verdict and keeps what it learns in a shared dictionary (fleet_rotation);
// each host's gate (a server of front.conf) reads it to refuse a host out of rotation at
// once, and /fleet/rotation shows it. The hosts and routes come from fleet_inventory.js,
// rendered with front.conf and loaded with it.

import FLEET from './fleet_inventory.js';

// The rotation's rules (tasks/steps/front_door.py's docstring and the README say them too).
const ROTATION = {
    unreachableAfter: 2,  // polls in a row without an answer: out, unreachable
    backAfter: 3,  // good polls in a row: an evicted or unreachable host is back
    silentAfter: 10,  // seconds a verdict may go unrenewed before the agent counts as silent
    reasonMax: 400,  // characters of a reason kept (the dictionary is small)
};

// The lists the front door merges from every host in rotation: field, and the key that
// makes two entries the same.
const LISTS = {
    '/api/tags': ['models', 'name'],
    '/api/ps': ['models', 'name'],
    '/v1/models': ['data', 'id'],
};

// Top-level fields besides `model` and `name` that name a model Ollama may fetch from
// its cloud: a model created from a cloud one, or a copy of one, runs there too.
const MORE_MODEL_FIELDS = {
    '/api/create': ['from'],
    '/api/copy': ['source'],
};

const CLOUD_OFF = 'ollama_allow_cloud is off for this fleet: ';

function reply(r, status, doc) {
    r.headersOut['Content-Type'] = 'application/json; charset=utf-8';
    r.return(status, JSON.stringify(doc));
}

// An error as Ollama answers it on that route: Anthropic's shape on /v1/messages
// (anthropic.NewError), OpenAI's on the other /v1/ routes (openai.NewError), else
// {"error": message}.
function ollamaError(r, status, message) {
    if (r.uri === '/v1/messages' || r.uri.startsWith('/v1/messages/')) {
        const types = {400: 'invalid_request_error', 401: 'authentication_error',
            403: 'permission_error', 404: 'not_found_error', 429: 'rate_limit_error',
            503: 'overloaded_error'};
        reply(r, status, {type: 'error',
            error: {type: types[status] || 'api_error', message: message}});
    } else if (r.uri.startsWith('/v1/')) {
        const types = {400: 'invalid_request_error', 404: 'not_found_error'};
        reply(r, status, {error: {message: message, type: types[status] || 'api_error',
            param: null, code: null}});
    } else {
        reply(r, status, {error: message});
    }
}

// strings.TrimSpace: JavaScript's white space and U+0085, which Go counts too.
function goTrim(text) {
    return text.replace(/^[\s\u0085]+|[\s\u0085]+$/g, '');
}

// Whether NAME is a cloud model as Ollama reads it (internal/modelref: parseSourceSuffix):
// the part after its last `:`, spaces trimmed and in any case, is `cloud`, or ends in
// `-cloud` and holds no `/` (`gpt-oss:cloud`, `gpt-oss:20b:cloud`, `gpt-oss:20b-cloud`).
function isCloud(name) {
    if (typeof name !== 'string') {
        return false;
    }
    const raw = goTrim(name);
    const colon = raw.lastIndexOf(':');
    if (colon < 0) {
        return false;
    }
    const suffix = goTrim(raw.substring(colon + 1));
    const lower = suffix.toLowerCase();
    return lower === 'cloud' || (lower.endsWith('-cloud') && suffix.indexOf('/') < 0);
}

// The request's body as text: '' when it has none, null when nginx holds one that njs
// cannot read (in nginx's temporary file before njs 0.8.10).
function bodyText(r) {
    let text;
    try {
        text = r.requestText;
    } catch (e) {
        text = undefined;
    }
    if (typeof text === 'string' && text !== '') {
        return text;
    }
    const length = r.headersIn['Content-Length'];
    const sent = (length !== undefined && length !== '0') || r.headersIn['Transfer-Encoding'];
    return sent ? null : '';
}

// The values of DOC's top-level fields named NAMES. Ollama (Go's encoding/json) reads a
// field whatever the case of its key (Unicode's simple folding: `MODEL`, and `ſ` for `s`).
function folded(key) {
    return key.toLowerCase().replace(/\u017f/g, 's').replace(/\u212a/g, 'k');
}

function fieldValues(doc, names) {
    const values = [];
    if (doc && typeof doc === 'object' && !Array.isArray(doc)) {
        Object.keys(doc).forEach((key) => {
            if (names.indexOf(folded(key)) >= 0) {
                values.push(doc[key]);
            }
        });
    }
    return values;
}

// What a JSON body asks for: the model it names (its `model`, else its `name`, which
// /api/show still reads) and every model name in it. For a body JSON.parse refuses though
// Ollama may not (trailing data after the object, more than the 32 levels njs parses):
// every `"model"`/`"name"` key at any depth (any case) whose value is a string, each
// string read whole as JSON reads it, so that an escape cannot hide the next key (more
// than Ollama reads: only to refuse); the first `model` routes.
function stringEnd(text, start) {
    let i = start + 1;
    while (i < text.length) {
        const c = text.charCodeAt(i);
        if (c === 92) {  // a backslash: the next character is escaped
            i += 2;
        } else if (c === 34) {
            return i + 1;
        } else {
            i += 1;
        }
    }
    return -1;
}

function decoded(token) {
    try {
        return JSON.parse(token);
    } catch (e) {
        return null;
    }
}

function scannedAsks(text) {
    const models = [];
    const names = [];
    let webSearch = false;
    let key = null;  // the key whose value comes next
    let i = text.indexOf('"');
    while (i >= 0) {
        const end = stringEnd(text, i);
        if (end < 0) {
            break;
        }
        const token = decoded(text.substring(i, end));
        let next = end;
        while (next < text.length && ' \t\r\n'.indexOf(text[next]) >= 0) {
            next += 1;
        }
        if (text[next] === ':') {
            key = typeof token === 'string' ? folded(token) : null;
        } else if (key !== null && typeof token === 'string') {
            if (key === 'model') {
                models.push(token);
            } else if (key === 'name') {
                names.push(token);
            } else if (key === 'type' && goTrim(token).startsWith('web_search')) {
                webSearch = true;
            }
            key = null;
        } else {
            key = null;
        }
        i = text.indexOf('"', end);
    }
    return {model: models[0] || '', names: models.concat(names), doc: null,
        webSearch: webSearch};
}

function jsonAsks(r, text) {
    let doc;
    try {
        doc = JSON.parse(text);
    } catch (e) {
        return scannedAsks(text);
    }
    const models = fieldValues(doc, ['model']);
    const named = fieldValues(doc, ['name']);
    const more = fieldValues(doc, MORE_MODEL_FIELDS[r.uri] || []);
    const model = models.filter((m) => typeof m === 'string' && m !== '').pop() ||
        named.filter((m) => typeof m === 'string').pop() || '';
    return {model: model, names: models.concat(named, more), doc: doc};
}

// What a multipart form (/v1/audio/transcriptions) asks for: its `model` field, which Go's
// FormValue reads from the query string first, then from the form's parts (a part may be
// quoted-printable: Go decodes it).
function formAsks(r, text) {
    const names = [];
    const query = r.args.model;
    (Array.isArray(query) ? query : query === undefined ? [] : [query])
        .forEach((m) => names.push(String(m)));
    const type = /boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(r.headersIn['Content-Type'] || '');
    if (type) {
        text.split('--' + (type[1] || type[2])).forEach((part) => {
            const end = part.indexOf('\r\n\r\n');
            const head = end < 0 ? '' : part.substring(0, end);
            const disposition = /^content-disposition:\s*form-data\s*;(.*)$/im.exec(head);
            if (!disposition || !/(^|;)\s*name\*?\s*=\s*"?model"?\s*(;|$)/i.test(disposition[1]) ||
                /(^|;)\s*filename\*?\s*=/i.test(disposition[1])) {
                return;
            }
            let value = part.substring(end + 4).replace(/\r\n$/, '');
            if (/^content-transfer-encoding:\s*quoted-printable\s*$/im.test(head)) {
                value = value.replace(/=\r?\n/g, '').replace(/=([0-9a-fA-F]{2})/g,
                    (m, hex) => String.fromCharCode(parseInt(hex, 16)));
            }
            names.push(value);
        });
    }
    return {model: names[0] || '', names: names, doc: null};
}

// What the request asks for: {model: the one to route by ('' for none), names: every
// model name in it, doc: the JSON body or null, unread: why its body could not be read}.
function asks(r) {
    if (r.uri.startsWith('/v1/models/')) {
        const model = r.uri.substring('/v1/models/'.length);
        return {model: model, names: [model], doc: null};
    }
    const text = bodyText(r);
    if (text === '') {
        return {model: '', names: [], doc: null};
    }
    if (text === null) {
        return {model: '', names: [], doc: null, unread: [413, 'the request body is too ' +
            'large for the front door to check the model it names']};
    }
    const encoding = (r.headersIn['Content-Encoding'] || 'identity').trim().toLowerCase();
    if (encoding !== 'identity') {
        return {model: '', names: [], doc: null, unread: [415, 'the front door checks the ' +
            'model a request names: send its body uncompressed (no Content-Encoding)']};
    }
    const asked = r.uri === '/v1/audio/transcriptions' ? formAsks(r, text) : jsonAsks(r, text);
    asked.body = true;
    return asked;
}

// Whether a /v1/responses or /v1/messages request declares the server-side web search
// tool, which Ollama runs against ollama.com with the queries the model writes.
function asksWebSearch(r, asked) {
    if (r.uri !== '/v1/responses' && r.uri !== '/v1/messages') {
        return false;
    }
    if (asked.doc === null) {
        return Boolean(asked.webSearch);
    }
    return fieldValues(asked.doc, ['tools']).some((tools) => Array.isArray(tools) &&
        tools.some((tool) => fieldValues(tool, ['type']).some((type) =>
            typeof type === 'string' && type.trim().startsWith('web_search'))));
}

// Why the request must not go on while the cloud is off: [status, message], or null.
function cloudRefusal(r, asked) {
    if (r.variables.fleet_allow_cloud === '1') {
        return null;
    }
    if (asked.unread) {
        return [asked.unread[0], CLOUD_OFF + asked.unread[1]];
    }
    const cloud = asked.names.filter(isCloud);
    if (cloud.length) {
        return [403, CLOUD_OFF + 'model ' + JSON.stringify(cloud[0]) + ' is an Ollama ' +
            'cloud model: it would run on ollama.com, outside the fleet'];
    }
    const remote = fieldValues(asked.doc, r.uri === '/api/create' ? ['remote_host'] : []);
    if (remote.some((host) => typeof host === 'string' && host !== '') ||
            (r.uri === '/api/create' && asked.doc === null && /remote_host/i.test(
                bodyText(r) || ''))) {
        return [403, CLOUD_OFF + 'a model created with remote_host runs on that host, ' +
            'outside the fleet'];
    }
    if (asksWebSearch(r, asked)) {
        return [403, CLOUD_OFF + "Ollama's web_search tool sends its queries to ollama.com"];
    }
    return null;
}

// One list, merged from every host in rotation (asked on the front door's loopback
// server); hosts that do not answer are left out.
function union(r, field, key) {
    const members = r.variables.fleet_members.split(' ').filter((m) => m !== '' &&
        !outNow(hostOf(m)));
    const base = 'http://127.0.0.1:' + r.variables.fleet_lists_port + '/';
    const asks = members.map((m) => ngx.fetch(base + m + r.uri)
        .then((answer) => (answer.status === 200 ? answer.json() : null))
        .then((doc) => doc, () => null));
    Promise.all(asks).then((docs) => {
        const seen = Object.create(null);
        const items = [];
        let answered = 0;
        docs.forEach((doc) => {
            if (!doc || typeof doc !== 'object') {
                return;
            }
            answered += 1;
            (Array.isArray(doc[field]) ? doc[field] : []).forEach((item) => {
                const id = item && item[key];
                if (typeof id === 'string' && !seen[id]) {
                    seen[id] = true;
                    items.push(item);
                }
            });
        });
        if (answered === 0) {
            ollamaError(r, 502, 'no host of the fleet answered ' + r.uri);
            return;
        }
        const doc = field === 'data' ? {object: 'list', data: items} : {models: items};
        reply(r, 200, doc);
    });
}

// Inference and the read-only endpoints: to the hosts that serve the model named.
function inference(r) {
    const list = LISTS[r.uri];
    if (list && (r.method === 'GET' || r.method === 'HEAD')) {
        union(r, list[0], list[1]);
        return;
    }
    const asked = asks(r);
    const refused = cloudRefusal(r, asked);
    if (refused) {
        ollamaError(r, refused[0], refused[1]);
        return;
    }
    const model = asked.model;
    if (model === '' && asked.body && r.variables.fleet_allow_cloud !== '1') {
        // a body whose model the front door cannot read may name one Ollama reads (a cloud
        // one too): it goes nowhere while the cloud is off
        ollamaError(r, 400, CLOUD_OFF + 'the front door found no model in this request ' +
            '(send JSON with a "model" string, or a form with a model field)');
        return;
    }
    // /api/version, /api/status, /, a cloud model (when allowed: any host asks ollama.com),
    // or a request Ollama itself will refuse
    if (model === '' || isCloud(model)) {
        if (!refusedAllOut(r, FLEET.hosts.map((h, n) => n), 'no host of the fleet')) {
            r.internalRedirect('@fleet_any');
        }
        return;
    }
    r.variables.fleet_model = model;
    const route = r.variables.fleet_route;
    if (!route) {
        ollamaError(r, 404, 'model "' + model + '" not found: no host of this fleet serves it');
        return;
    }
    if (!refusedAllOut(r, FLEET.routes[route] || [],
            'no host that serves model "' + model + '"')) {
        r.internalRedirect('@fleet_route');
    }
}

// Admin endpoints (pull, delete, create, copy, push, blobs, ...), past the admin gate:
// models are the inventory's, so only a call that names one host goes anywhere.
function admin(r) {
    // a blob is a model's layer, gigabytes that name no model: not read
    const asked = r.uri.startsWith('/api/blobs/') ? {model: '', names: [], doc: null} : asks(r);
    const refused = cloudRefusal(r, asked);
    if (refused) {
        ollamaError(r, refused[0], refused[1]);
        return;
    }
    const named = r.headersIn['X-Fleet-Host'];
    if (!named) {
        ollamaError(r, 403, 'models are managed by the inventory (ollama_models) and put ' +
            'on every host by the deploy; to call one host anyway, name it in an ' +
            'X-Fleet-Host header (its inventory name)');
        return;
    }
    if (!r.variables.fleet_named) {
        ollamaError(r, 404, 'X-Fleet-Host: ' + JSON.stringify(named) +
            ' is not a gpu_servers host of this fleet');
        return;
    }
    r.internalRedirect('@fleet_named');
}

// -- the rotation ---------------------------------------------------------------------

const WHY_HELD = {inventory: 'drained by the inventory (front_door_drained)',
    drain: 'drained by an operator (ollama-fleet drain)', roll: 'held out by a roll'};

function dict() {
    return ngx.shared.fleet_rotation;
}

function hostOf(upstream) {
    return FLEET.hosts.find((h) => h.upstream === upstream);
}

// Why HOST is out of rotation now ('' when it is in): held out by the config, or by the
// poll (kept under `out:NAME` for the gates, which read it on every request).
function outNow(host) {
    if (!host) {
        return '';
    }
    if (host.out) {
        return WHY_HELD[host.out] || host.out;
    }
    return dict().get('out:' + host.name) || '';
}

// 503 in the route's shape when every host of MEMBERS (indices into FLEET.hosts) is out of
// rotation, naming why each is; false (nothing answered) otherwise.
function refusedAllOut(r, members, what) {
    if (!members.length) {
        return false;
    }
    const why = [];
    for (let i = 0; i < members.length; i++) {
        const host = FLEET.hosts[members[i]];
        const out = outNow(host);
        if (!out) {
            return false;
        }
        why.push(host.name + ': ' + out);
    }
    ollamaError(r, 503, what + ' is in rotation at this front door (' + why.join('; ') + ')');
    return true;
}

// js_set $fleet_gate_out, in a host's gate ($fleet_gate: its upstream): '' while the host is
// in rotation, else the error the gate answers (404) so that the route tries the next host.
function gateOut(r) {
    const host = hostOf(r.variables.fleet_gate);
    const out = host ? dict().get('out:' + host.name) : '';
    return out ? JSON.stringify({error: host.name + ' is out of rotation at this front door: ' +
        out}) : '';
}

function text(value) {
    return typeof value === 'string' ? value.substring(0, ROTATION.reasonMax) : '';
}

function seconds(value) {
    return typeof value === 'number' && isFinite(value) ? value : null;
}

// A verdict's instances as the rotation view shows them.
function instancesOf(verdict) {
    const view = {};
    (Array.isArray(verdict.instances) ? verdict.instances : []).forEach((i) => {
        if (i && typeof i === 'object' && typeof i.name === 'string') {
            view[i.name] = {state: i.state === 'ok' ? 'in' : 'evicted',
                reason: text((i.kind ? i.kind + ': ' : '') + (i.reason || '')),
                since: seconds(i.since)};
        }
    });
    return view;
}

// Why a fresh verdict takes its host out ('' when it does not).
function verdictOut(verdict, instances) {
    if (verdict.state === 'out') {
        return (verdict.kind ? verdict.kind + ': ' : '') +
            (verdict.reason || 'the health agent takes the host out');
    }
    const names = Object.keys(instances);
    if (!names.some((n) => instances[n].state === 'in')) {
        return names.length ? 'no instance is ok (' + names.map((n) => n + ': ' +
            (instances[n].reason || 'out')).join('; ') + ')' : 'the verdict lists no instance';
    }
    return '';
}

// What one poll of a host makes of its record. ANSWER: {verdict} (its health agent's
// verdict), {unreachable: why} (its nginx did not answer), {silent: why} (its nginx answered
// without a verdict). NOW: unix seconds. A record: state (in, evicted, unreachable), reason,
// kind, since (out since), verdict_at (the verdict's checked_at), instances, and the counts
// and times the rules need. Rules: a fresh verdict that says out, or has no instance ok,
// evicts at once; ROTATION.unreachableAfter polls without an answer make it unreachable;
// ROTATION.backAfter good polls in a row bring it back; a verdict not renewed for
// ROTATION.silentAfter seconds (or none at all) keeps the host in, flagged `agent silent`.
function observe(previous, answer, now) {
    const rec = Object.assign({state: 'in', reason: '', kind: '', since: null,
        verdict_at: null, instances: {}, failed: 0, good: 0, renewed_at: null}, previous || {});
    rec.polled_at = now;
    if (answer.unreachable !== undefined) {
        rec.failed += 1;
        rec.good = 0;
        if (rec.failed >= ROTATION.unreachableAfter) {
            if (rec.state === 'in') {
                rec.since = now;
            }
            rec.state = 'unreachable';
            rec.kind = 'unreachable';
            rec.reason = text('no answer to ' + rec.failed + ' polls in a row: ' +
                answer.unreachable);
        }
        return rec;
    }
    rec.failed = 0;
    let out = '';
    let silent = '';
    const verdict = answer.verdict;
    if (verdict) {
        const at = seconds(verdict.checked_at);
        if (at !== null && (rec.verdict_at === null || at > rec.verdict_at)) {
            // renewed: seen now (the host's clock may differ from ours), or, the first time,
            // when it says, if that is not later than now
            rec.renewed_at = rec.verdict_at === null ? Math.min(now, at) : now;
        }
        rec.verdict_at = at;
        rec.instances = instancesOf(verdict);
        const age = rec.renewed_at === null ? Infinity : now - rec.renewed_at;
        // (three of its own intervals, for an agent whose health_interval is long)
        const interval = Number(verdict.interval_s) > 0 ? Number(verdict.interval_s) : 1;
        if (at === null || age > Math.max(ROTATION.silentAfter, 3 * interval)) {
            silent = 'agent silent: its verdict ' + (at === null ? 'has no checked_at' :
                'was last renewed ' + Math.round(age) + ' s ago');
        } else if ((verdict.state !== 'ok' && verdict.state !== 'out') ||
                !Array.isArray(verdict.instances)) {
            // not a verdict this front door can read: no reason to take the host out
            silent = 'agent silent: its verdict has no state ok or out and list of instances';
        } else {
            out = verdictOut(verdict, rec.instances);
        }
    } else {
        silent = 'agent silent: ' + answer.silent;
    }
    if (out) {
        rec.good = 0;
        if (rec.state === 'in') {
            rec.since = now;
        }
        rec.state = 'evicted';
        rec.kind = verdict.state === 'out' ? text(verdict.kind || 'out') : 'instances';
        rec.reason = text(out);
        return rec;
    }
    if (rec.state !== 'in') {
        rec.good += 1;
        if (rec.good < ROTATION.backAfter) {
            return rec;
        }
    }
    rec.good = 0;
    rec.state = 'in';
    rec.since = null;
    rec.kind = silent ? 'silent' : '';
    rec.reason = text(silent);
    return rec;
}

// One host's verdict, asked through the front door's loopback server (its `fleet_host_N`
// upstream: keepalive, bounded at 400 ms a step; 599: the host's nginx did not answer).
function ask(host) {
    const url = 'http://127.0.0.1:' + FLEET.lists_port + '/' + host.upstream + '/fleet/health';
    return ngx.fetch(url).then((answer) => answer.text().then((body) => {
        if (answer.status === 599) {
            return {unreachable: body || 'no answer'};
        }
        if (answer.status !== 200) {
            return {silent: 'no verdict (HTTP ' + answer.status + ' from its nginx)'};
        }
        let verdict;
        try {
            verdict = JSON.parse(body);
        } catch (e) {
            verdict = null;
        }
        if (!verdict || typeof verdict !== 'object' || Array.isArray(verdict)) {
            return {silent: 'its verdict is not a JSON object'};
        }
        return {verdict: verdict};
    })).catch((e) => ({unreachable: String(e && e.message || e)}));
}

function parsed(value) {
    try {
        return value ? JSON.parse(value) : null;
    } catch (e) {
        return null;
    }
}

// js_periodic (every second, one worker): every host's verdict, into the dictionary.
function poll() {
    const names = {};
    FLEET.hosts.forEach((h) => { names[h.name] = true; });
    // a host the inventory no longer has leaves no state behind
    dict().keys().forEach((key) => {
        if (!names[key.substring(key.indexOf(':') + 1)]) {
            dict().delete(key);
        }
    });
    return Promise.all(FLEET.hosts.map((host) => ask(host).then((answer) => {
        const before = parsed(dict().get('host:' + host.name));
        const rec = observe(before, answer, Date.now() / 1000);
        if (rec.state !== (before ? before.state : 'in')) {
            ngx.log(ngx.WARN, 'fleet rotation: ' + host.name + ' ' + rec.state +
                (rec.reason ? ': ' + rec.reason : ''));
        }
        try {
            dict().set('host:' + host.name, JSON.stringify(rec));
            if (rec.state === 'in') {
                dict().delete('out:' + host.name);
            } else {
                dict().set('out:' + host.name, rec.state + ' (' + rec.reason + ')');
            }
        } catch (e) {
            ngx.log(ngx.ERR, 'fleet rotation: ' + host.name + ': ' + e.message);
        }
    })));
}

// GET /fleet/rotation: each host as this front door sees it (the interface note's shape).
function rotation(r) {
    const hosts = {};
    FLEET.hosts.forEach((h) => {
        const rec = Object.assign({state: 'in', reason: '', since: null, verdict_at: null,
            instances: {}}, parsed(dict().get('host:' + h.name)) || {});
        const view = {state: rec.state, cause: '', reason: rec.reason, since: rec.since,
            verdict_at: rec.verdict_at, instances: rec.instances};
        if (h.out) {  // held out by the config: that state, whatever the verdict says
            view.state = h.out === 'roll' ? 'held' : 'drained';
            view.cause = h.out;
            view.since = h.since;
        }
        hosts[h.name] = view;
    });
    reply(r, 200, {version: 1, front_door: FLEET.front_door, at: Date.now() / 1000,
        hosts: hosts});
}

export default {inference, admin, gateOut, poll, rotation, observe};
