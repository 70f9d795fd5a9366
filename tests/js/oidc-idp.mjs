// A real OpenID provider for the end-to-end tests: the certified `oidc-provider` package on
// loopback, with a minimal login page and a few test control endpoints.
//
//   node oidc-idp.mjs <config.json>
//
// Config:
//   { "port": 0,
//     "clients": [{ "client_id": "twinward", "client_secret": "...", "redirect_uris": ["..."] }],
//     "users": [{ "id": "alice", "email": "...", "name": "...", "groups": ["..."] }] }
//
// Listens on 127.0.0.1 only; the issuer is http://localhost:<port>. Prints one line
// `READY http://localhost:<port>` on stdout once it accepts requests, then logs each request
// to stderr. Exits 2 with a message on stderr when the config is unusable.
//
// The provider: authorization code flow only, PKCE required (S256 only), client_secret_basic,
// ID tokens signed RS256 with a key generated at start. Scopes `openid email profile groups`;
// email, name and groups are put in the ID token itself (not only in userinfo), and the ID
// token carries `amr: ["pwd"]`. `sub` is the user id.
//
// Login page: GET /interaction/<uid> lists one button per user; choosing one signs that user
// in and grants the requested scopes and claims at once (no consent page). The cancel button
// ends the request with error=access_denied. The cookies (idp_session, idp_interaction,
// idp_interaction_resume, each with a .sig) are SameSite=Lax and not Secure, which works over
// plain http; a browser that signed in once is signed in again silently (send prompt=login
// to choose again).
//
// Control endpoints (JSON):
//   GET  /__control/state   -> { tokens_issued, tamper, kid, kids }
//   POST /__control/rotate  { "keep_old": false } -> { kid, kids }
//        New signing key with a new kid; ID tokens are signed with it from now on. The JWKS
//        lists only the new key, or the new key first and the previous ones after it with
//        keep_old. The provider object is rebuilt with the new key set, but all its state
//        (sessions, interactions, codes, grants) lives in this process's own store and the
//        cookie keys are unchanged, so logins started before a rotation finish after it and
//        browsers stay signed in.
//   POST /__control/tamper  { "mode": "none" | "issuer" | "audience" | "azp" | "nonce" |
//                             "expired" | "iat_future" | "wrong_key" | "alg_none" }
//        The ID token of the NEXT successful token response is rewritten, then the mode
//        resets to "none". The changed token is signed again with the current key and kid, so
//        only the claim checks can catch it; `wrong_key` signs with an unrelated key under the
//        current kid, `alg_none` leaves it unsigned with alg "none".
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';

import { CompactSign, calculateJwkThumbprint, exportJWK, generateKeyPair, importJWK } from 'jose';
import Provider from 'oidc-provider';

const TAMPER_MODES = new Set([
  'none', 'issuer', 'audience', 'azp', 'nonce', 'expired', 'iat_future', 'wrong_key', 'alg_none',
]);

function fail(message) {
  process.stderr.write(`oidc-idp: ${message}\n`);
  process.exit(2);
}

function log(line) {
  process.stderr.write(`oidc-idp: ${line}\n`);
}

// ---- configuration ----

function loadConfig(path) {
  if (!path) fail('usage: node oidc-idp.mjs <config.json>');
  let config;
  try {
    config = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    fail(`cannot read config ${path}: ${e.message}`);
  }
  if (config === null || typeof config !== 'object' || Array.isArray(config)) {
    fail('config must be a JSON object');
  }
  const port = config.port ?? 0;
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`config.port must be an integer 0..65535, got ${JSON.stringify(config.port)}`);

  const nonEmptyString = (v) => typeof v === 'string' && v.length > 0;
  if (!Array.isArray(config.clients) || config.clients.length === 0) fail('config.clients must be a non-empty array');
  const clientIds = new Set();
  config.clients.forEach((c, i) => {
    if (!c || typeof c !== 'object') fail(`config.clients[${i}] must be an object`);
    if (!nonEmptyString(c.client_id)) fail(`config.clients[${i}].client_id must be a non-empty string`);
    if (clientIds.has(c.client_id)) fail(`config.clients[${i}].client_id ${c.client_id} is listed twice`);
    clientIds.add(c.client_id);
    if (!nonEmptyString(c.client_secret)) fail(`config.clients[${i}].client_secret must be a non-empty string`);
    if (!Array.isArray(c.redirect_uris) || c.redirect_uris.length === 0 || !c.redirect_uris.every(nonEmptyString)) {
      fail(`config.clients[${i}].redirect_uris must be a non-empty array of URLs`);
    }
    c.redirect_uris.forEach((u) => {
      try {
        new URL(u); // eslint-disable-line no-new
      } catch {
        fail(`config.clients[${i}].redirect_uris: ${JSON.stringify(u)} is not a URL`);
      }
    });
  });

  if (!Array.isArray(config.users) || config.users.length === 0) fail('config.users must be a non-empty array');
  const users = new Map();
  config.users.forEach((u, i) => {
    if (!u || typeof u !== 'object') fail(`config.users[${i}] must be an object`);
    if (!nonEmptyString(u.id)) fail(`config.users[${i}].id must be a non-empty string`);
    if (users.has(u.id)) fail(`config.users[${i}].id ${u.id} is listed twice`);
    if (!nonEmptyString(u.email)) fail(`config.users[${i}].email must be a non-empty string`);
    if (!nonEmptyString(u.name)) fail(`config.users[${i}].name must be a non-empty string`);
    const groups = u.groups ?? [];
    if (!Array.isArray(groups) || !groups.every((g) => typeof g === 'string')) {
      fail(`config.users[${i}].groups must be an array of strings`);
    }
    users.set(u.id, { id: u.id, email: u.email, name: u.name, groups });
  });

  return { port, clients: config.clients, users };
}

const config = loadConfig(process.argv[2]);

// ---- keys ----

async function newSigningKey() {
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const jwk = await exportJWK(privateKey);
  const kid = (await calculateJwkThumbprint(jwk)).slice(0, 16);
  return { ...jwk, kid, alg: 'RS256', use: 'sig' };
}

const state = {
  tokensIssued: 0,
  tamper: 'none',
  // Signing keys as private JWKs, the current one first.
  keys: [await newSigningKey()],
};
const unrelatedKey = await newSigningKey();

// ---- storage ----

// All provider state (sessions, interactions, codes, tokens, grants) in one map owned by this
// process, so that it outlives a provider object rebuilt by a key rotation.
const store = new Map();

function storeGet(key) {
  const entry = store.get(key);
  if (!entry) return undefined;
  if (entry.expiresAt <= Date.now()) {
    store.delete(key);
    return undefined;
  }
  return entry.value;
}

function storeSet(key, value, expiresIn) {
  store.set(key, { value, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : Infinity });
}

const GRANTABLE = new Set(['AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode', 'BackchannelAuthenticationRequest']);

class Adapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    if (this.model === 'Session') storeSet(`sessionUid:${payload.uid}`, id, expiresIn);
    if (GRANTABLE.has(this.model) && payload.grantId) {
      const grantKey = `grant:${payload.grantId}`;
      const keys = storeGet(grantKey);
      if (keys) keys.push(key);
      else storeSet(grantKey, [key]);
    }
    if (payload.userCode) storeSet(`userCode:${payload.userCode}`, id, expiresIn);
    storeSet(key, payload, expiresIn);
  }

  async find(id) {
    return storeGet(this.key(id));
  }

  async findByUid(uid) {
    const id = storeGet(`sessionUid:${uid}`);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = storeGet(`userCode:${userCode}`);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const value = storeGet(this.key(id));
    if (value) value.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) { // eslint-disable-line class-methods-use-this
    const grantKey = `grant:${grantId}`;
    (storeGet(grantKey) ?? []).forEach((key) => store.delete(key));
    store.delete(grantKey);
  }
}

// ---- the provider ----

function html(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>${html(title)}</title></head>
<body>
<h1>${html(title)}</h1>
${body}
</body>
</html>
`;
}

const cookieKeys = [randomBytes(32).toString('hex')];

function providerConfiguration() {
  return {
    adapter: Adapter,
    clients: config.clients.map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      redirect_uris: c.redirect_uris,
      response_types: ['code'],
      grant_types: ['authorization_code'],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'RS256',
    })),
    jwks: { keys: state.keys },
    responseTypes: ['code'],
    clientAuthMethods: ['client_secret_basic'],
    pkce: { methods: ['S256'], required: () => true },
    scopes: ['openid', 'email', 'profile', 'groups'],
    // oidc-provider puts amr and auth_time in an ID token only when they are requested;
    // listing them under `openid` always includes them.
    claims: {
      openid: ['sub', 'auth_time', 'amr'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username'],
      groups: ['groups'],
      acr: null,
      iss: null,
      sid: null,
    },
    // Scope-requested claims go into the ID token, not only to userinfo.
    conformIdTokenClaims: false,
    async findAccount(ctx, id) {
      const user = config.users.get(id);
      if (!user) return undefined;
      return {
        accountId: user.id,
        async claims() {
          return {
            sub: user.id,
            email: user.email,
            email_verified: true,
            name: user.name,
            preferred_username: user.id,
            groups: user.groups,
          };
        },
      };
    },
    features: {
      devInteractions: { enabled: false },
    },
    interactions: {
      url: (ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    cookies: {
      // Browsers share cookies between ports of one host, and the gateway under test also
      // runs on localhost: names of our own keep the two apart.
      names: {
        session: 'idp_session',
        interaction: 'idp_interaction',
        resume: 'idp_interaction_resume',
      },
      keys: cookieKeys,
      // Plain http on loopback: SameSite=None cookies without Secure are dropped by browsers.
      long: { httpOnly: true, sameSite: 'lax' },
      short: { httpOnly: true, sameSite: 'lax' },
    },
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 60,
      Grant: 14 * 24 * 3600,
      IdToken: 3600,
      Interaction: 3600,
      Session: 14 * 24 * 3600,
    },
    async renderError(ctx, out, error) {
      ctx.type = 'html';
      const items = Object.entries(out).map(([k, v]) => `<li><b>${html(k)}</b>: ${html(v)}</li>`).join('\n');
      ctx.body = page('Sign-in error', `<ul>\n${items}\n</ul>`);
      if (error && !error.expose) log(`error page: ${error.stack || error}`);
    },
  };
}

let provider;
let handler;

function buildProvider(issuer) {
  const p = new Provider(issuer, providerConfiguration());
  p.on('server_error', (ctx, err) => log(`server_error on ${ctx.method} ${ctx.path}: ${err.stack || err}`));
  p.use(middleware);
  provider = p;
  handler = p.callback();
}

// ---- request bodies ----

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw Object.assign(new Error('request body too large'), { status: 413 });
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function readJson(req) {
  const text = await readBody(req);
  if (!text.trim()) return {};
  try {
    const value = JSON.parse(text);
    if (value && typeof value === 'object' && !Array.isArray(value)) return value;
  } catch {
    // falls through
  }
  throw Object.assign(new Error('body must be a JSON object'), { status: 400 });
}

// ---- ID token rewriting ----

function b64json(value) {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

async function tamperIdToken(token, mode) {
  const [h, p] = token.split('.');
  const header = JSON.parse(Buffer.from(h, 'base64url').toString('utf8'));
  const payload = JSON.parse(Buffer.from(p, 'base64url').toString('utf8'));
  const now = Math.floor(Date.now() / 1000);
  const ttl = (payload.exp ?? now + 3600) - (payload.iat ?? now);
  let signer = state.keys.find((k) => k.kid === header.kid) ?? state.keys[0];

  switch (mode) {
    case 'issuer':
      payload.iss = 'http://evil.localhost:1';
      break;
    case 'audience':
      payload.aud = ['other-client'];
      break;
    case 'azp': {
      const aud = Array.isArray(payload.aud) ? payload.aud : [payload.aud];
      payload.aud = [...aud.filter((a) => a !== 'other-client'), 'other-client'];
      payload.azp = 'other-client';
      break;
    }
    case 'nonce':
      payload.nonce = randomBytes(16).toString('base64url');
      break;
    case 'expired':
      payload.exp = now - 2 * 3600;
      payload.iat = payload.exp - ttl;
      if (typeof payload.auth_time === 'number' && payload.auth_time > payload.iat) payload.auth_time = payload.iat;
      break;
    case 'iat_future':
      payload.iat = now + 3600;
      payload.exp = payload.iat + ttl;
      break;
    case 'wrong_key':
      signer = unrelatedKey;
      break;
    case 'alg_none':
      return `${b64json({ ...header, alg: 'none' })}.${b64json(payload)}.`;
    default:
      throw new Error(`unknown tamper mode ${mode}`);
  }

  const key = await importJWK(signer, 'RS256');
  return new CompactSign(Buffer.from(JSON.stringify(payload)))
    .setProtectedHeader(header)
    .sign(key);
}

// ---- interactions ----

async function grantFor(details, accountId) {
  const { params } = details;
  let grant;
  if (details.grantId) grant = await provider.Grant.find(details.grantId);
  if (!grant || grant.accountId !== accountId) {
    grant = new provider.Grant({ accountId, clientId: params.client_id });
  }
  if (params.scope) grant.addOIDCScope(String(params.scope));
  if (params.claims) {
    try {
      const requested = JSON.parse(params.claims);
      const names = [...Object.keys(requested.id_token ?? {}), ...Object.keys(requested.userinfo ?? {})];
      if (names.length) grant.addOIDCClaims(names);
    } catch {
      // the authorization endpoint already validated it
    }
  }
  return grant.save();
}

function loginPage(details) {
  const uid = html(details.uid);
  const buttons = [...config.users.values()].map((u) => (
    `<p><button type="submit" name="user" value="${html(u.id)}">${html(u.name)} &lt;${html(u.email)}&gt;</button></p>`
  )).join('\n');
  return page('Sign in', `<p>Client <code>${html(details.params.client_id)}</code> asks you to sign in.</p>
<form method="post" action="/interaction/${uid}/login">
${buttons}
<p><button type="submit" name="cancel" value="1">Cancel</button></p>
</form>`);
}

async function finish(ctx, result) {
  const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
  ctx.status = 303;
  ctx.set('Location', returnTo);
  ctx.body = '';
}

async function interaction(ctx, uid, action) {
  ctx.set('Cache-Control', 'no-store');
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (details.uid !== uid) ctx.throw(400, 'interaction mismatch');

  if (action === undefined && ctx.method === 'GET') {
    if (details.prompt.name === 'consent' && details.session?.accountId) {
      const grantId = await grantFor(details, details.session.accountId);
      await finish(ctx, { consent: { grantId } });
      return;
    }
    ctx.type = 'html';
    ctx.body = loginPage(details);
    return;
  }

  if (action === 'login' && ctx.method === 'POST') {
    const form = new URLSearchParams(await readBody(ctx.req));
    if (form.get('cancel')) {
      await finish(ctx, { error: 'access_denied', error_description: 'End-User cancelled the sign-in' });
      return;
    }
    const id = form.get('user');
    if (!id || !config.users.has(id)) {
      ctx.status = 400;
      ctx.type = 'html';
      ctx.body = loginPage(details);
      return;
    }
    const grantId = await grantFor(details, id);
    await finish(ctx, {
      login: { accountId: id, amr: ['pwd'], remember: true },
      consent: { grantId },
    });
    return;
  }

  ctx.throw(405, 'method not allowed');
}

// ---- control endpoints ----

function kids() {
  return state.keys.map((k) => k.kid);
}

async function control(ctx, name) {
  ctx.set('Cache-Control', 'no-store');
  if (name === 'state' && ctx.method === 'GET') {
    ctx.body = {
      tokens_issued: state.tokensIssued, tamper: state.tamper, kid: state.keys[0].kid, kids: kids(),
    };
    return;
  }
  if (name === 'rotate' && ctx.method === 'POST') {
    const body = await readJson(ctx.req);
    const keepOld = body.keep_old === true;
    const key = await newSigningKey();
    state.keys = keepOld ? [key, ...state.keys] : [key];
    buildProvider(provider.issuer);
    log(`rotated signing key: kid ${key.kid}, jwks ${kids().join(', ')}`);
    ctx.body = { kid: key.kid, kids: kids() };
    return;
  }
  if (name === 'tamper' && ctx.method === 'POST') {
    const body = await readJson(ctx.req);
    const mode = body.mode ?? 'none';
    if (!TAMPER_MODES.has(mode)) {
      ctx.status = 400;
      ctx.body = { error: `unknown mode ${JSON.stringify(mode)}`, modes: [...TAMPER_MODES] };
      return;
    }
    state.tamper = mode;
    log(`next ID token: tamper ${mode}`);
    ctx.body = { tamper: mode };
    return;
  }
  ctx.status = 404;
  ctx.body = { error: `no control endpoint ${ctx.method} ${ctx.path}` };
}

// ---- the middleware around oidc-provider's own routes ----

async function middleware(ctx, next) {
  const started = Date.now();
  try {
    const interactionMatch = /^\/interaction\/([^/]+)(?:\/(login))?$/.exec(ctx.path);
    const controlMatch = /^\/__control\/([a-z_]+)$/.exec(ctx.path);
    if (controlMatch) {
      await control(ctx, controlMatch[1]);
    } else if (interactionMatch) {
      await interaction(ctx, interactionMatch[1], interactionMatch[2]);
    } else {
      await next();
      if (ctx.method === 'POST' && ctx.path === '/token' && ctx.status === 200
          && ctx.body && typeof ctx.body.id_token === 'string') {
        state.tokensIssued += 1;
        if (state.tamper !== 'none') {
          const mode = state.tamper;
          state.tamper = 'none';
          ctx.body = { ...ctx.body, id_token: await tamperIdToken(ctx.body.id_token, mode) };
          log(`ID token rewritten: ${mode}`);
        }
      }
    }
  } catch (err) {
    if (err.status && err.status < 500) {
      ctx.status = err.status;
      ctx.type = 'text';
      ctx.body = err.message;
    } else {
      log(`error on ${ctx.method} ${ctx.path}: ${err.stack || err}`);
      ctx.status = 500;
      ctx.type = 'text';
      ctx.body = 'internal error';
    }
  } finally {
    log(`${ctx.method} ${ctx.path} ${ctx.status} ${Date.now() - started}ms`);
  }
}

// ---- start ----

const server = http.createServer((req, res) => {
  if (!handler) {
    res.statusCode = 503;
    res.end('starting');
    return;
  }
  handler(req, res);
});
server.on('error', (err) => fail(`cannot listen on 127.0.0.1:${config.port}: ${err.message}`));
server.listen(config.port, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://localhost:${port}`;
  try {
    buildProvider(issuer);
  } catch (err) {
    fail(`invalid provider configuration: ${err.stack || err}`);
  }
  process.stdout.write(`READY ${issuer}\n`);
  log(`issuer ${issuer}, signing kid ${state.keys[0].kid}`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}
