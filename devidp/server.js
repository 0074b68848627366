// jit-bot development IdP: oidc-provider with the RFC 8693 token-exchange profile of
// DESIGN.md section 3. For tests and local trials only; it binds to 127.0.0.1.
//
// Environment (all read once at start):
//   DEVIDP_PORT                 required; TCP port on 127.0.0.1 (0 = pick one; the ready line says which)
//   DEVIDP_CLIENT_ID            required; the bot's client_id
//   DEVIDP_CLIENT_SECRET        required; the bot's client_secret (client_secret_basic or
//                               client_secret_post: oidc-provider 9 accepts either for such a client)
//   DEVIDP_TRUSTED_ISSUER       required; the bot's JIT_PUBLIC_URL, compared exactly with the assertion's iss
//   DEVIDP_TRUSTED_JWKS_URL     the bot's JWKS URL (default {DEVIDP_TRUSTED_ISSUER}/.well-known/jwks.json)
//   DEVIDP_RESOURCES            required; JSON {audience: [allowed scopes]}
//   DEVIDP_LIFETIME_PARAM       token request parameter carrying the wanted lifetime (default requested_lifetime)
//   DEVIDP_DEFAULT_TTL          seconds, when that parameter is absent (default 3600)
//   DEVIDP_TOKEN_FORMAT         opaque (default) | jwt (at+jwt signed with the provider's JWKS, RS256)
//   DEVIDP_JWKS_CACHE_SECONDS   how long the trusted JWKS is cached (default 0: fetched on every exchange)
//   DEVIDP_JWKS_TIMEOUT_MS      timeout of that fetch (default 5000)
//   DEVIDP_JWKS                 optional private JWKS JSON for the provider's own signing keys
//                               (default: fresh RS256 + ES256 keys each start)
//   DEVIDP_STATE_FILE           optional JSON file keeping tokens, seen jtis and stats across restarts
//   DEVIDP_ADMIN                1 = enable the loopback-only /__admin/* endpoints (see README.md)
//
// Never log token values: only grant types, error codes and descriptions written here.

import { createHash, generateKeyPairSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import * as querystring from 'node:querystring';

import * as jose from 'jose';
import Provider, { errors } from 'oidc-provider';

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const MAX_ASSERTION_LIFETIME = 120;
const IAT_LEEWAY = 5;

// ---------------------------------------------------------------- configuration

function fail(message) {
  process.stderr.write(`devidp: ${message}\n`);
  process.exit(2);
}

function required(name) {
  const value = process.env[name];
  if (value === undefined || value === '') fail(`${name} is required`);
  return value;
}

function integer(name, fallback, { min = 0 } = {}) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) < min) fail(`${name} must be an integer >= ${min}`);
  return Number(raw);
}

function loadConfig() {
  const port = integer('DEVIDP_PORT', undefined);
  if (port === undefined) fail('DEVIDP_PORT is required (0 picks a free port)');
  if (port > 65535) fail('DEVIDP_PORT must be <= 65535');

  const trustedIssuer = required('DEVIDP_TRUSTED_ISSUER');
  const trustedJwksUrl = process.env.DEVIDP_TRUSTED_JWKS_URL
    || `${trustedIssuer.replace(/\/+$/, '')}/.well-known/jwks.json`;
  try {
    new URL(trustedJwksUrl); // eslint-disable-line no-new
  } catch {
    fail('DEVIDP_TRUSTED_JWKS_URL must be an absolute URL');
  }

  let resources;
  try {
    resources = JSON.parse(required('DEVIDP_RESOURCES'));
  } catch {
    fail('DEVIDP_RESOURCES must be JSON');
  }
  if (resources === null || typeof resources !== 'object' || Array.isArray(resources)) {
    fail('DEVIDP_RESOURCES must be a JSON object {audience: [scopes]}');
  }
  for (const [aud, scopes] of Object.entries(resources)) {
    if (!Array.isArray(scopes) || !scopes.every((s) => typeof s === 'string' && /^[\x21\x23-\x5B\x5D-\x7E]+$/.test(s))) {
      fail(`DEVIDP_RESOURCES[${JSON.stringify(aud)}] must be a list of scope tokens`);
    }
  }

  const lifetimeParam = process.env.DEVIDP_LIFETIME_PARAM || 'requested_lifetime';
  if (['grant_type', 'subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'scope',
    'resource', 'actor_token', 'actor_token_type', 'client_id', 'client_secret'].includes(lifetimeParam)) {
    fail(`DEVIDP_LIFETIME_PARAM must not be a standard parameter name (${lifetimeParam})`);
  }

  const tokenFormat = process.env.DEVIDP_TOKEN_FORMAT || 'opaque';
  if (!['opaque', 'jwt'].includes(tokenFormat)) fail('DEVIDP_TOKEN_FORMAT must be opaque or jwt');

  let jwks;
  if (process.env.DEVIDP_JWKS) {
    try {
      jwks = JSON.parse(process.env.DEVIDP_JWKS);
    } catch {
      fail('DEVIDP_JWKS must be JSON');
    }
    if (!Array.isArray(jwks?.keys) || !jwks.keys.some((k) => k.kty === 'RSA' && k.d)) {
      fail('DEVIDP_JWKS must be a private JWKS with at least one RSA key');
    }
  }

  return {
    port,
    clientId: required('DEVIDP_CLIENT_ID'),
    clientSecret: required('DEVIDP_CLIENT_SECRET'),
    trustedIssuer,
    trustedJwksUrl,
    resources,
    lifetimeParam,
    defaultTtl: integer('DEVIDP_DEFAULT_TTL', 3600, { min: 1 }),
    tokenFormat,
    jwksCacheMs: integer('DEVIDP_JWKS_CACHE_SECONDS', 0) * 1000,
    jwksTimeoutMs: integer('DEVIDP_JWKS_TIMEOUT_MS', 5000, { min: 1 }),
    jwks,
    stateFile: process.env.DEVIDP_STATE_FILE || undefined,
    admin: process.env.DEVIDP_ADMIN === '1',
  };
}

function generateJwks() {
  const keys = [];
  for (const [type, options, alg] of [
    ['rsa', { modulusLength: 2048 }, 'RS256'],
    ['ec', { namedCurve: 'P-256' }, 'ES256'],
  ]) {
    const { privateKey } = generateKeyPairSync(type, options);
    const jwk = privateKey.export({ format: 'jwk' });
    keys.push({ ...jwk, alg, use: 'sig', kid: `devidp-${alg.toLowerCase()}-${randomBytes(6).toString('hex')}` });
  }
  return { keys };
}

// ---------------------------------------------------------------- state (memory, optionally a file)

const epoch = () => Math.floor(Date.now() / 1000);
const sha256 = (value) => createHash('sha256').update(value).digest('hex');

function emptyStats() {
  return {
    exchanges: 0,
    exchange_errors: 0,
    revocations: {},
    introspections: 0,
    jwks_fetches: 0,
    injected_failures: 0,
  };
}

class State {
  constructor(file) {
    this.file = file;
    this.models = {}; // model name -> id -> { payload, exp (epoch s) | null }
    this.seenJtis = {}; // iss + NUL + jti -> exp
    this.issuedJwts = {}; // jti of JWT access tokens still valid -> exp
    this.stats = emptyStats();
    this.lastAssertion = null;
    if (file) {
      let data;
      try {
        data = JSON.parse(readFileSync(file, 'utf8'));
      } catch (err) {
        if (err.code !== 'ENOENT') fail(`cannot read DEVIDP_STATE_FILE: ${err.message}`);
      }
      if (data) {
        Object.assign(this, {
          models: data.models ?? {},
          seenJtis: data.seenJtis ?? {},
          issuedJwts: data.issuedJwts ?? {},
          stats: { ...emptyStats(), ...data.stats },
          lastAssertion: data.lastAssertion ?? null,
        });
      }
    }
  }

  persist() {
    if (!this.file) return;
    const tmp = `${this.file}.tmp`;
    writeFileSync(tmp, JSON.stringify({
      models: this.models,
      seenJtis: this.seenJtis,
      issuedJwts: this.issuedJwts,
      stats: this.stats,
      lastAssertion: this.lastAssertion,
    }), { mode: 0o600 });
    renameSync(tmp, this.file);
  }

  // Returns false when the jti was already used by this issuer (replay).
  useJti(iss, jti, exp) {
    const now = epoch();
    for (const [key, keyExp] of Object.entries(this.seenJtis)) {
      if (keyExp < now - IAT_LEEWAY) delete this.seenJtis[key];
    }
    const key = `${iss}\u0000${jti}`;
    if (key in this.seenJtis) return false;
    this.seenJtis[key] = exp;
    this.persist();
    return true;
  }
}

// oidc-provider's own memory adapter is an LRU of 1000 entries and cannot survive a restart.
function adapterFactory(state) {
  return class Adapter {
    constructor(model) {
      this.model = model;
      state.models[model] ??= {};
      this.entries = state.models[model];
    }

    async upsert(id, payload, expiresIn) {
      this.entries[id] = { payload, exp: typeof expiresIn === 'number' ? epoch() + expiresIn : null };
      state.persist();
    }

    async find(id) {
      const entry = this.entries[id];
      if (!entry) return undefined;
      if (entry.exp !== null && entry.exp <= epoch()) {
        delete this.entries[id];
        return undefined;
      }
      return entry.payload;
    }

    async findByUid(uid) {
      return Object.values(this.entries).find((e) => e.payload.uid === uid)?.payload;
    }

    async findByUserCode(userCode) {
      return Object.values(this.entries).find((e) => e.payload.userCode === userCode)?.payload;
    }

    async consume(id) {
      if (this.entries[id]) {
        this.entries[id].payload.consumed = epoch();
        state.persist();
      }
    }

    async destroy(id) {
      delete this.entries[id];
      state.persist();
    }

    async revokeByGrantId(grantId) {
      for (const [id, entry] of Object.entries(this.entries)) {
        if (entry.payload.grantId === grantId) delete this.entries[id];
      }
      state.persist();
    }
  };
}

// ---------------------------------------------------------------- token exchange

function grantError(description) {
  const err = new errors.InvalidGrant();
  err.error_description = description;
  return err;
}

class JwksUnavailable extends Error {}

function jwksUnavailable() {
  const err = new errors.TemporarilyUnavailable('could not fetch the trusted JWKS');
  err.status = 503;
  err.statusCode = 503;
  err.expose = true;
  return err;
}

function describeVerifyError(err) {
  switch (err.code) {
    case 'ERR_JWT_EXPIRED': return 'subject_token has expired';
    case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED': return 'subject_token signature verification failed';
    case 'ERR_JWKS_NO_MATCHING_KEY': return 'no trusted key matches the subject_token header';
    case 'ERR_JWKS_MULTIPLE_MATCHING_KEYS': return 'several trusted keys match the subject_token header';
    case 'ERR_JOSE_ALG_NOT_ALLOWED': return 'subject_token alg must be ES256 or RS256';
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED': return `subject_token ${err.message}`;
    default: return 'subject_token is not a valid JWT';
  }
}

function parseScopes(value) {
  return value.split(' ').filter(Boolean);
}

// Set by POST /__admin/misbehave: the next exchange answers as a faulty IdP would (claims a wider
// scope and/or a longer expires_in than asked for), so tests can check the bot's response checks.
const misbehaviour = { next: null, ignoreRevocations: 0 };

function makeTokenExchange(config, state, trustedKeys) {
  const allowedScopes = new Map(Object.entries(config.resources).map(([aud, s]) => [aud, new Set(s)]));

  return async function tokenExchange(ctx) {
    const { params, client, provider } = ctx.oidc;

    for (const name of ['subject_token', 'subject_token_type', 'audience', 'scope']) {
      if (!params[name]) throw new errors.InvalidRequest(`missing required parameter '${name}'`);
    }
    if (params.subject_token_type !== JWT_TYPE) {
      throw new errors.InvalidRequest(`subject_token_type must be ${JWT_TYPE}`);
    }
    if (params.requested_token_type !== undefined && params.requested_token_type !== ACCESS_TOKEN_TYPE) {
      throw new errors.InvalidRequest(`requested_token_type must be ${ACCESS_TOKEN_TYPE}`);
    }
    if (params.actor_token !== undefined || params.actor_token_type !== undefined) {
      throw new errors.InvalidRequest('actor_token is not supported; the client is the actor');
    }

    let requestedLifetime = config.defaultTtl;
    const rawLifetime = params[config.lifetimeParam];
    if (rawLifetime !== undefined) {
      if (!/^[1-9]\d{0,9}$/.test(rawLifetime)) {
        throw new errors.InvalidRequest(`${config.lifetimeParam} must be a positive integer (seconds)`);
      }
      requestedLifetime = Number(rawLifetime);
    }

    const audience = params.audience;
    const resourceScopes = allowedScopes.get(audience);
    if (!resourceScopes) throw new errors.InvalidTarget('unknown audience');

    const scopes = parseScopes(params.scope);
    if (scopes.length === 0) throw new errors.InvalidScope('scope must not be empty');
    for (const scope of scopes) {
      if (!resourceScopes.has(scope)) {
        throw new errors.InvalidScope('requested scope is not allowed for this audience', scope);
      }
    }

    let claims;
    try {
      const header = jose.decodeProtectedHeader(params.subject_token);
      if (typeof header.kid !== 'string' || !header.kid) throw grantError('subject_token header must carry a kid');
      ({ payload: claims } = await jose.jwtVerify(params.subject_token, trustedKeys, {
        issuer: config.trustedIssuer,
        audience: provider.issuer,
        algorithms: ['ES256', 'RS256'],
        requiredClaims: ['iss', 'sub', 'aud', 'iat', 'exp', 'jti'],
      }));
    } catch (err) {
      if (err instanceof errors.InvalidGrant) throw err;
      if (err instanceof JwksUnavailable) throw jwksUnavailable();
      throw grantError(describeVerifyError(err));
    }

    const now = epoch();
    if (typeof claims.sub !== 'string' || !claims.sub) throw grantError('subject_token sub must be a non-empty string');
    if (typeof claims.jti !== 'string' || !claims.jti) throw grantError('subject_token jti must be a non-empty string');
    if (claims.iat > now + IAT_LEEWAY) throw grantError('subject_token iat is in the future');
    if (claims.exp - claims.iat > MAX_ASSERTION_LIFETIME) {
      throw grantError(`subject_token exp must be at most ${MAX_ASSERTION_LIFETIME} s after iat`);
    }
    // A verified assertion is single-use, even if the exchange then fails on scope or expiry.
    if (!state.useJti(claims.iss, claims.jti, claims.exp)) throw grantError('subject_token jti has already been used');

    const { jit } = claims;
    if (jit === null || typeof jit !== 'object' || Array.isArray(jit)) {
      throw grantError('subject_token must carry a jit object claim');
    }
    if (typeof jit.request_id !== 'string' || !jit.request_id) throw grantError('jit.request_id must be a non-empty string');
    if (typeof jit.resource !== 'string' || !jit.resource) throw grantError('jit.resource must be a non-empty string');
    let approvedScopes = jit.scopes;
    if (typeof approvedScopes === 'string') approvedScopes = parseScopes(approvedScopes);
    if (!Array.isArray(approvedScopes) || !approvedScopes.every((s) => typeof s === 'string')) {
      throw grantError('jit.scopes must be a list of strings');
    }
    if (typeof jit.expires_at !== 'number' || !Number.isFinite(jit.expires_at)) {
      throw grantError('jit.expires_at must be a number (epoch seconds)');
    }

    state.lastAssertion = claims;
    state.persist();

    const approved = new Set(approvedScopes);
    for (const scope of scopes) {
      if (!approved.has(scope)) throw new errors.InvalidScope('requested scope was not approved (jit.scopes)', scope);
    }

    const remaining = jit.expires_at - Date.now() / 1000;
    if (remaining <= 0) throw grantError('jit.expires_at has passed');
    const lifetime = Math.max(1, Math.floor(Math.min(requestedLifetime, remaining)));

    const token = new provider.AccessToken({
      accountId: claims.sub,
      client,
      gty: TOKEN_EXCHANGE,
      scope: scopes.join(' '),
      expiresIn: lifetime,
      resourceServer: new provider.ResourceServer(audience, {
        audience,
        scope: [...resourceScopes].join(' '),
        accessTokenFormat: config.tokenFormat,
        accessTokenTTL: lifetime,
        ...(config.tokenFormat === 'jwt' ? { jwt: { sign: { alg: 'RS256' } } } : {}),
      }),
    });
    ctx.oidc.entity('AccessToken', token);
    const value = await token.save();

    if (config.tokenFormat === 'jwt') {
      const { jti, exp } = jose.decodeJwt(value);
      state.issuedJwts[jti] = exp;
      state.persist();
    }

    ctx.body = {
      access_token: value,
      issued_token_type: ACCESS_TOKEN_TYPE,
      token_type: 'Bearer',
      expires_in: lifetime,
      scope: token.scope,
    };
    if (misbehaviour.next) {
      const { extra_scope: extraScope, expires_in: expiresIn } = misbehaviour.next;
      misbehaviour.next = null;
      if (extraScope) ctx.body.scope = `${ctx.body.scope} ${extraScope}`;
      if (expiresIn) ctx.body.expires_in = expiresIn;
    }
  };
}

// ---------------------------------------------------------------- JWT access tokens at revocation/introspection

// oidc-provider refuses structured (JWT) tokens at both endpoints (unsupported_token_type) and
// does not store them, so in jwt mode devidp answers for them itself from the ids of the JWT
// access tokens it issued and nobody revoked yet.

function safeEqual(a, b) {
  const x = Buffer.from(String(a));
  const y = Buffer.from(String(b));
  return x.length === y.length && timingSafeEqual(x, y);
}

function formDecode(value) {
  return decodeURIComponent(value.replace(/\+/g, '%20'));
}

// Same rules as oidc-provider for a client_secret_basic client: Basic (form-urlencoded id and
// secret, RFC 6749 2.3.1) or client_id + client_secret in the body, never both.
function authenticateClient(ctx, body) {
  const header = ctx.get('authorization');
  if (header && body.client_secret !== undefined) return undefined;
  if (body.client_secret !== undefined) return { id: body.client_id, secret: body.client_secret };
  const [scheme, encoded, extra] = header.split(' ');
  if (scheme?.toLowerCase() !== 'basic' || !encoded || extra !== undefined) return undefined;
  const decoded = Buffer.from(encoded, 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  if (i === -1) return undefined;
  try {
    return { id: formDecode(decoded.slice(0, i)), secret: formDecode(decoded.slice(i + 1)) };
  } catch {
    return undefined;
  }
}

async function handleJwtAccessToken(ctx, route, body, config, state, ownKeys, issuer) {
  const credentials = authenticateClient(ctx, body);
  if (!credentials || !safeEqual(credentials.id, config.clientId) || !safeEqual(credentials.secret, config.clientSecret)) {
    ctx.status = 401;
    ctx.set('WWW-Authenticate', 'Basic realm="devidp"');
    ctx.body = { error: 'invalid_client', error_description: 'client authentication failed' };
    return;
  }

  let payload;
  try {
    const { payload: bytes, protectedHeader } = await jose.compactVerify(body.token, ownKeys);
    payload = JSON.parse(new TextDecoder().decode(bytes));
    if (protectedHeader.typ !== 'at+jwt' || payload.iss !== issuer) payload = undefined;
  } catch {
    payload = undefined;
  }
  const now = epoch();
  for (const [jti, exp] of Object.entries(state.issuedJwts)) {
    if (exp <= now) delete state.issuedJwts[jti];
  }
  const live = payload !== undefined && payload.jti in state.issuedJwts && payload.exp > now
    && payload.client_id === config.clientId;

  if (route === 'revocation') {
    if (live) {
      delete state.issuedJwts[payload.jti];
      state.persist();
    }
    ctx.status = 200;
    ctx.body = '';
    return;
  }

  ctx.status = 200;
  ctx.set('Cache-Control', 'no-store');
  ctx.body = live
    ? { ...payload, active: true, token_type: 'Bearer' }
    : { active: false };
}

// ---------------------------------------------------------------- admin and fault injection

function isLoopback(address) {
  return address === '127.0.0.1' || address === '::1' || address === '::ffff:127.0.0.1';
}

async function readRaw(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

const FAIL_ERRORS = {
  400: 'invalid_request',
  401: 'invalid_client',
  429: 'slow_down',
  503: 'temporarily_unavailable',
};

// ---------------------------------------------------------------- main

async function main() {
  const config = loadConfig();
  const state = new State(config.stateFile);
  const jwks = config.jwks ?? generateJwks();

  const server = http.createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.port, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;

  const remoteKeys = jose.createRemoteJWKSet(new URL(config.trustedJwksUrl), {
    cacheMaxAge: config.jwksCacheMs,
    cooldownDuration: 0,
    timeoutDuration: config.jwksTimeoutMs,
    [jose.customFetch]: (...args) => {
      state.stats.jwks_fetches += 1;
      return fetch(...args);
    },
  });
  const trustedKeys = async (header, token) => {
    try {
      return await remoteKeys(header, token);
    } catch (err) {
      if (err.code === 'ERR_JWKS_NO_MATCHING_KEY' || err.code === 'ERR_JWKS_MULTIPLE_MATCHING_KEYS') throw err;
      throw new JwksUnavailable();
    }
  };
  const ownKeys = jose.createLocalJWKSet({
    // eslint-disable-next-line no-unused-vars
    keys: jwks.keys.map(({ d, p, q, dp, dq, qi, oth, key_ops, ...pub }) => pub),
  });

  const scopeUnion = [...new Set(Object.values(config.resources).flat())];
  const provider = new Provider(issuer, {
    adapter: adapterFactory(state),
    jwks,
    clients: [{
      client_id: config.clientId,
      client_secret: config.clientSecret,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['client_credentials', TOKEN_EXCHANGE],
      response_types: [],
      redirect_uris: [],
      scope: scopeUnion.join(' ') || undefined,
    }],
    scopes: scopeUnion,
    cookies: { keys: [randomBytes(32).toString('hex')] },
    clientBasedCORS: () => false,
    features: {
      devInteractions: { enabled: false },
      userinfo: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: {
        enabled: true,
        allowedPolicy: async (_ctx, caller) => caller.clientAuthMethod !== 'none',
      },
      revocation: {
        enabled: true,
        allowedPolicy: async (_ctx, caller, token) => caller.clientId === token.clientId,
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => undefined,
        useGrantedResource: async () => false,
        getResourceServerInfo: async (_ctx, indicator) => {
          const scopes = config.resources[indicator];
          if (!scopes) throw new errors.InvalidTarget('unknown resource');
          return {
            audience: indicator,
            scope: scopes.join(' '),
            accessTokenTTL: config.defaultTtl,
            accessTokenFormat: config.tokenFormat,
            ...(config.tokenFormat === 'jwt' ? { jwt: { sign: { alg: 'RS256' } } } : {}),
          };
        },
      },
    },
    ttl: {
      ClientCredentials: config.defaultTtl,
      AccessToken: config.defaultTtl,
    },
    extraTokenClaims: async (_ctx, token) => (
      token.gty === TOKEN_EXCHANGE ? { act: { sub: token.clientId } } : undefined
    ),
  });

  provider.registerGrantType(
    TOKEN_EXCHANGE,
    makeTokenExchange(config, state, trustedKeys),
    ['subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'scope',
      'actor_token', 'actor_token_type', config.lifetimeParam],
  );

  provider.on('grant.success', (ctx) => {
    if (ctx.oidc.params.grant_type === TOKEN_EXCHANGE) {
      state.stats.exchanges += 1;
      state.persist();
    }
  });
  provider.on('grant.error', (ctx, err) => {
    const grantType = ctx.oidc?.params?.grant_type;
    if (grantType === TOKEN_EXCHANGE) {
      state.stats.exchange_errors += 1;
      state.persist();
    }
    process.stdout.write(`devidp: token error grant_type=${grantType} error=${err.error} description=${JSON.stringify(err.error_description)}\n`);
  });
  provider.on('server_error', (_ctx, err) => {
    process.stderr.write(`devidp: server_error ${err.stack}\n`);
  });

  const routes = {
    [provider.pathFor('token')]: 'token',
    [provider.pathFor('revocation')]: 'revocation',
    [provider.pathFor('introspection')]: 'introspection',
  };
  const injections = { delayMs: 0, failures: { token: [], revocation: [], introspection: [] } };

  provider.use(async (ctx, next) => {
    if (ctx.path.startsWith('/__admin/') && config.admin) {
      if (!isLoopback(ctx.socket.remoteAddress)) {
        ctx.status = 403;
        return;
      }
      await admin(ctx);
      return;
    }

    const route = ctx.method === 'POST' ? routes[ctx.path] : undefined;
    if (!route) {
      await next();
      return;
    }

    const rule = injections.failures[route][0];
    if (rule) {
      rule.count -= 1;
      if (rule.count <= 0) injections.failures[route].shift();
      state.stats.injected_failures += 1;
      state.persist();
      ctx.status = rule.status;
      ctx.set('Cache-Control', 'no-store');
      ctx.body = {
        error: rule.error ?? FAIL_ERRORS[rule.status] ?? (rule.status >= 500 ? 'server_error' : 'invalid_request'),
        error_description: 'failure injected by devidp',
      };
      return;
    }

    if (route === 'revocation' && misbehaviour.ignoreRevocations > 0) {
      // A faulty IdP: says "revoked" (RFC 7009's 200) but leaves the token active.
      misbehaviour.ignoreRevocations -= 1;
      state.stats.ignored_revocations = (state.stats.ignored_revocations ?? 0) + 1;
      state.persist();
      ctx.status = 200;
      ctx.body = '';
      return;
    }

    let tokenParam;
    if (config.tokenFormat === 'jwt' && route !== 'token') {
      // Read the form here; oidc-provider then takes the parsed body from ctx.request.body.
      const body = querystring.parse(await readRaw(ctx.req));
      tokenParam = typeof body.token === 'string' ? body.token : undefined;
      let isJwt = false;
      try {
        isJwt = !!(tokenParam && jose.decodeProtectedHeader(tokenParam));
      } catch {
        isJwt = false;
      }
      if (isJwt) {
        await handleJwtAccessToken(ctx, route, body, config, state, ownKeys, issuer);
      } else {
        ctx.request.body = body;
        await next();
      }
    } else {
      await next();
      tokenParam = ctx.oidc?.params?.token;
    }

    if (ctx.status === 200 && route === 'revocation' && typeof tokenParam === 'string') {
      const key = sha256(tokenParam);
      state.stats.revocations[key] = (state.stats.revocations[key] ?? 0) + 1;
      state.persist();
    }
    if (ctx.status === 200 && route === 'introspection') {
      state.stats.introspections += 1;
      state.persist();
    }
    if (injections.delayMs > 0) await sleep(injections.delayMs);
  });

  async function admin(ctx) {
    const action = `${ctx.method} ${ctx.path}`;
    let body = {};
    if (ctx.method === 'POST') {
      try {
        const raw = await readRaw(ctx.req);
        body = raw ? JSON.parse(raw) : {};
      } catch {
        ctx.status = 400;
        ctx.body = { error: 'body must be JSON' };
        return;
      }
    }
    ctx.set('Cache-Control', 'no-store');
    switch (action) {
      case 'GET /__admin/stats':
        ctx.body = state.stats;
        return;
      case 'GET /__admin/last_assertion':
        if (state.lastAssertion === null) {
          ctx.status = 404;
          ctx.body = { error: 'no assertion accepted yet' };
        } else {
          ctx.body = state.lastAssertion;
        }
        return;
      case 'POST /__admin/delay':
        if (!Number.isInteger(body.ms) || body.ms < 0) {
          ctx.status = 400;
          ctx.body = { error: 'ms must be a non-negative integer' };
          return;
        }
        injections.delayMs = body.ms;
        ctx.body = { ms: injections.delayMs };
        return;
      case 'POST /__admin/fail': {
        const { status, count = 1, endpoint = 'token', error } = body;
        if (!Number.isInteger(status) || status < 400 || status > 599 || !Number.isInteger(count) || count < 1
          || !(endpoint in injections.failures) || (error !== undefined && typeof error !== 'string')) {
          ctx.status = 400;
          ctx.body = { error: 'expected {"status": 400-599, "count": >=1, "endpoint": token|revocation|introspection, "error"?: string}' };
          return;
        }
        injections.failures[endpoint].push({ status, count, error });
        ctx.body = { status, count, endpoint };
        return;
      }
      case 'POST /__admin/misbehave':
        if ((body.extra_scope !== undefined && typeof body.extra_scope !== 'string')
          || (body.expires_in !== undefined && !Number.isInteger(body.expires_in))
          || (body.ignore_revocations !== undefined && !Number.isInteger(body.ignore_revocations))) {
          ctx.status = 400;
          ctx.body = { error: 'expected {"extra_scope"?: string, "expires_in"?: integer, "ignore_revocations"?: integer}' };
          return;
        }
        if (body.extra_scope !== undefined || body.expires_in !== undefined) {
          misbehaviour.next = { extra_scope: body.extra_scope, expires_in: body.expires_in };
        }
        if (body.ignore_revocations !== undefined) misbehaviour.ignoreRevocations = body.ignore_revocations;
        ctx.body = { next: misbehaviour.next, ignore_revocations: misbehaviour.ignoreRevocations };
        return;
      case 'POST /__admin/reset':
        misbehaviour.next = null;
        misbehaviour.ignoreRevocations = 0;
        state.stats = emptyStats();
        state.lastAssertion = null;
        injections.delayMs = 0;
        for (const key of Object.keys(injections.failures)) injections.failures[key] = [];
        state.persist();
        ctx.body = { reset: true };
        return;
      default:
        ctx.status = 404;
        ctx.body = { error: 'unknown admin endpoint' };
    }
  }

  server.on('request', provider.callback());
  process.stdout.write(`devidp listening on ${issuer}\n`);

  const stop = () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => {
  process.stderr.write(`devidp: failed to start: ${err.stack}\n`);
  process.exit(1);
});
