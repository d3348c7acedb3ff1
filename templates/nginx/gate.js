// Copied by the deploy from templates/nginx/gate.js; edits here are overwritten.
// The gate's key check, in nginx's JavaScript module (njs; templates/nginx/gate.j2 uses it).
//
// The key maps (api-keys.map, admin-keys.map) hold the SHA-256 of each key, never the key:
// nginx looks up the digest of the key a request carries. So
// - letter case counts: nginx's map compares its keys in lower case, but the digest of a key
//   in another case is another digest;
// - the comparison leaks nothing of a key through its timing: the digest is worked out over
//   the whole key the client sent, and nginx's hash lookup then compares digests byte by
//   byte, which at most tells how much of the guess's digest some key's digest shares, and
//   that brings no one closer to a key (nor to its length);
// - a host's disk, and an `nginx -t` error, hold digests only.

import cr from 'crypto';  // njs's own (Node-like), not the global WebCrypto

// RFC 6750: `Bearer` (any case) and the token; $api_credential also carries the key of an
// `x-api-key` header as `Bearer <key>`. Longer than any key (256): no key, no digest to work.
const BEARER = /^Bearer +([^ ]{1,256})$/i;

// $api_key_digest: the hex SHA-256 of the request's key, or '' when it carries none.
function keyDigest(r) {
    const found = BEARER.exec(r.variables.api_credential || '');
    return found ? cr.createHash('sha256').update(found[1]).digest('hex') : '';
}

export default {keyDigest};
