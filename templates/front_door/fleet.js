// Copied by the deploy from templates/front_door/fleet.js; edits here are overwritten.
// The front door's router, in nginx's JavaScript (njs 0.7 and later; front.conf imports
// it). The fleet itself lives in front.conf's maps, rendered from the inventory: which
// hosts serve which model ($fleet_route), which host an admin names ($fleet_named), the
// hosts in rotation ($fleet_members). This only reads what a request asks for and hands
// it to the location that proxies it; it never proxies a byte itself, so streams stay
// unbuffered.

// The lists the front door merges from every host in rotation: field, and the key that
// makes two entries the same.
const LISTS = {
    '/api/tags': ['models', 'name'],
    '/api/ps': ['models', 'name'],
    '/v1/models': ['data', 'id'],
};

function reply(r, status, doc) {
    r.headersOut['Content-Type'] = 'application/json; charset=utf-8';
    r.return(status, JSON.stringify(doc));
}

function ollamaError(r, status, message) {
    if (r.uri.startsWith('/v1/')) {  // the shape of Ollama's OpenAI-compatible endpoints
        const type = status === 404 ? 'not_found_error' : 'api_error';
        reply(r, status, {error: {message: message, type: type, param: null, code: null}});
    } else {
        reply(r, status, {error: message});
    }
}

// The request's JSON body, or null. nginx has read it whole (in memory, or in its
// temporary file, which njs 0.8.10 and later read too).
function body(r) {
    try {
        return JSON.parse(r.requestText || '');
    } catch (e) {
        return null;
    }
}

// A top-level string `"model": "..."`, for a body JSON.parse refused though Ollama may
// not (njs parses 32 levels deep at most): the first such pair, or ''.
const MODEL_PAIR = /"model"\s*:\s*"((?:[^"\\]|\\.)*)"/;

function scannedModel(r) {
    let text;
    try {
        text = r.requestText || '';
    } catch (e) {
        return '';
    }
    const found = MODEL_PAIR.exec(text);
    return found ? found[1] : '';
}

// The model a request names: GET /v1/models/{model}, else the body's `model` (`name` on
// /api/show, which Ollama still reads); '' when it names none.
function requestedModel(r) {
    if (r.uri.startsWith('/v1/models/')) {
        return r.uri.substring('/v1/models/'.length);
    }
    const doc = body(r);
    if (doc === null) {
        return scannedModel(r);
    }
    if (typeof doc !== 'object') {
        return '';
    }
    const model = doc.model || doc.name;
    return typeof model === 'string' ? model : '';
}

// One list, merged from every host in rotation (asked on the front door's loopback
// server); hosts that do not answer are left out.
function union(r, field, key) {
    const members = r.variables.fleet_members.split(' ').filter((m) => m !== '');
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
    const model = requestedModel(r);
    if (model === '') {  // /api/version, /, or a request Ollama itself will refuse
        r.internalRedirect('@fleet_any');
        return;
    }
    r.variables.fleet_model = model;
    if (!r.variables.fleet_route) {
        ollamaError(r, 404, 'model "' + model + '" not found: no host of this fleet serves it');
        return;
    }
    r.internalRedirect('@fleet_route');
}

// Admin endpoints (pull, delete, create, copy, push, blobs, ...), past the admin gate:
// models are the inventory's, so only a call that names one host goes anywhere.
function admin(r) {
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

export default {inference, admin};
