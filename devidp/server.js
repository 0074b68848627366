// jit-bot development IdP: oidc-provider with the RFC 8693 token-exchange profile of
// docs/architecture.md ("The token exchange profile"). For tests and local trials only; it binds to 127.0.0.1.
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
import { gzipSync } from 'node:zlib';

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
    faults_applied: 0,
    faults: {}, // endpoint -> mode -> n (POST /__admin/fault)
  };
}

class State {
  constructor(file) {
    this.file = file;
    this.models = {}; // model name -> id -> { payload, exp (epoch s) | null }
    this.seenJtis = {}; // iss + NUL + jti -> exp
    this.issuedJwts = {}; // jti of JWT access tokens still valid -> exp
    // Every access token issued by token exchange: { sha256, format, jti (jwt only), exp, scope,
    // audience, sub, request_id }. Never the token value itself (GET /__admin/tokens).
    this.tokens = [];
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
          tokens: data.tokens ?? [],
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
      tokens: this.tokens,
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
// scope and/or a longer expires_in than asked for, and/or, in jwt mode, signs the access token with
// a JSON-number kid), so tests can check the bot's response checks.
const misbehaviour = { next: null, ignoreRevocations: 0 };

// A broken IdP's JWT: still RS256 with the provider's own RSA key, but "kid" is a number
// (oddKid) and/or the payload claims more than the answer said (claims merged into it).
async function resign(value, jwks, { oddKid = false, claims = undefined }) {
  const [headerPart, payloadPart] = value.split('.');
  const { kid } = JSON.parse(new TextDecoder().decode(jose.base64url.decode(headerPart)));
  const rsaKeys = jwks.keys.filter((k) => k.kty === 'RSA' && k.d);
  const jwk = rsaKeys.find((k) => k.kid === kid) ?? rsaKeys[0];
  // eslint-disable-next-line no-unused-vars
  const { key_ops, use, ...importable } = jwk;
  const key = await jose.importJWK(importable, 'RS256');
  let payload = jose.base64url.decode(payloadPart);
  if (claims) {
    const merged = { ...JSON.parse(new TextDecoder().decode(payload)), ...claims };
    payload = new TextEncoder().encode(JSON.stringify(merged));
  }
  return new jose.CompactSign(payload)
    .setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: oddKid ? 123 : jwk.kid })
    .sign(key);
}

function makeTokenExchange(config, state, trustedKeys, jwks) {
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
    const approvers = jit.approvers ?? [];
    if (!Array.isArray(approvers) || !approvers.every((a) => typeof a === 'string')) {
      throw grantError('jit.approvers must be a list of strings');
    }
    const extraClaims = jit.claims ?? {};
    if (extraClaims === null || typeof extraClaims !== 'object' || Array.isArray(extraClaims)
      || !Object.values(extraClaims).every((v) => ['string', 'number', 'boolean'].includes(typeof v))) {
      throw grantError('jit.claims must be an object of strings, numbers and booleans');
    }

    if (jit.break_glass !== undefined && typeof jit.break_glass !== 'boolean') {
      throw grantError('jit.break_glass must be true or false');
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
    // What the approval says, for the resource server: in a JWT access token's payload, and in
    // introspection's answer for an opaque one (extraTokenClaims reads it at save).
    // A break-glass grant says so in the token, so the resource server can log or limit it.
    token.jitContext = {
      request_id: jit.request_id, approvers, claims: extraClaims, ...(jit.break_glass === true ? { break_glass: true } : {}),
    };
    ctx.oidc.entity('AccessToken', token);
    let value = await token.save();
    const next = misbehaviour.next ?? {};
    misbehaviour.next = null;

    const record = {
      format: config.tokenFormat,
      scope: token.scope,
      audience,
      sub: claims.sub,
      request_id: jit.request_id,
    };
    if (config.tokenFormat === 'jwt') {
      if (next.odd_kid || next.jwt_claims) {
        value = await resign(value, jwks, { oddKid: next.odd_kid, claims: next.jwt_claims });
      }
      const { jti, exp } = jose.decodeJwt(value);
      state.issuedJwts[jti] = exp;
      Object.assign(record, { jti, exp });
    } else {
      record.exp = state.models.AccessToken?.[value]?.payload?.exp ?? epoch() + lifetime;
    }
    state.tokens.push({ sha256: sha256(value), ...record });
    state.persist();

    ctx.body = {
      access_token: value,
      issued_token_type: ACCESS_TOKEN_TYPE,
      token_type: 'Bearer',
      expires_in: lifetime,
      scope: token.scope,
    };
    const { extra_scope: extraScope, expires_in: expiresIn } = next;
    if (extraScope) ctx.body.scope = `${ctx.body.scope} ${extraScope}`;
    if (expiresIn) ctx.body.expires_in = expiresIn;
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

// jose's local JWKS matches a kid only when it is a string, so a token whose header carries a
// JSON-number kid (misbehave odd_kid) finds no key: then each of the provider's own public keys is tried.
async function verifyOwnJws(token, ownKeys, publicKeys) {
  const options = { algorithms: ['RS256', 'ES256'] };
  try {
    return await jose.compactVerify(token, ownKeys, options);
  } catch (err) {
    if (err.code !== 'ERR_JWKS_NO_MATCHING_KEY' && err.code !== 'ERR_JWKS_MULTIPLE_MATCHING_KEYS') throw err;
    for (const key of publicKeys) {
      try {
        return await jose.compactVerify(token, key, options); // eslint-disable-line no-await-in-loop
      } catch {
        // try the next key
      }
    }
    throw err;
  }
}

async function handleJwtAccessToken(ctx, route, body, config, state, ownKeys, publicKeys, issuer) {
  const credentials = authenticateClient(ctx, body);
  if (!credentials || !safeEqual(credentials.id, config.clientId) || !safeEqual(credentials.secret, config.clientSecret)) {
    ctx.status = 401;
    ctx.set('WWW-Authenticate', 'Basic realm="devidp"');
    ctx.body = { error: 'invalid_client', error_description: 'client authentication failed' };
    return;
  }

  let payload;
  try {
    const { payload: bytes, protectedHeader } = await verifyOwnJws(body.token, ownKeys, publicKeys);
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

// POST /__admin/fault: the answer of a handled (or, for replace with process false, unhandled)
// request is delivered the way a hostile IdP or a bad network would.

const FAULT_ENDPOINTS = ['token', 'revocation', 'introspection', 'jwks', 'discovery'];
const HEADER_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
const MAX_TIMER_MS = 2 ** 31 - 1;
const isObject = (value) => value !== null && typeof value === 'object' && !Array.isArray(value);
const isPositiveInteger = (value) => Number.isSafeInteger(value) && value >= 1;

// Each mode: its parameters, and a check that returns the parameters with defaults or an error string.
const FAULT_MODES = {
  trickle: {
    usage: '{"bytes_per_second"?: integer >= 1 (default 1)}',
    parse: ({ bytes_per_second: rate = 1 }) => (
      isPositiveInteger(rate) ? { bytes_per_second: rate } : 'bytes_per_second must be an integer >= 1'),
  },
  stall: {
    usage: '{} (no parameters)',
    parse: () => ({}),
  },
  late: {
    usage: `{"ms": integer 0-${MAX_TIMER_MS}}`,
    parse: ({ ms }) => (
      Number.isInteger(ms) && ms >= 0 && ms <= MAX_TIMER_MS ? { ms } : `ms must be an integer 0-${MAX_TIMER_MS}`),
  },
  replace: {
    usage: '{"status": 100-599, "body"?: string, "content_type"?: string, "headers"?: {name: string}, "process"?: boolean}',
    parse: ({ status, body = '', content_type: contentType = 'application/json', headers = {}, process: handle = true }) => {
      if (!Number.isInteger(status) || status < 100 || status > 599) return 'status must be an integer 100-599';
      if (typeof body !== 'string') return 'body must be a string';
      if (typeof contentType !== 'string' || !contentType || !HEADER_VALUE.test(contentType)) {
        return 'content_type must be a non-empty header value';
      }
      if (typeof handle !== 'boolean') return 'process must be a boolean';
      if (!isObject(headers)) return 'headers must be an object {name: string value}';
      for (const [name, value] of Object.entries(headers)) {
        if (!HEADER_NAME.test(name)) return `header name ${JSON.stringify(name)} is not an HTTP token`;
        if (['content-length', 'transfer-encoding'].includes(name.toLowerCase())) {
          return `header ${name} is computed by devidp and cannot be set`;
        }
        if (typeof value !== 'string' || !HEADER_VALUE.test(value)) {
          return `header ${name} must have a string value without control characters`;
        }
      }
      return { status, body, content_type: contentType, headers, process: handle };
    },
  },
  gzip: {
    usage: '{"inflate_to"?: integer >= 0 (default 0)}',
    parse: ({ inflate_to: inflateTo = 0 }) => (
      Number.isSafeInteger(inflateTo) && inflateTo >= 0 && inflateTo <= 2 ** 30
        ? { inflate_to: inflateTo } : 'inflate_to must be an integer 0-1073741824'),
  },
  status: {
    usage: '{"status": 200-599}',
    parse: ({ status }) => (
      Number.isInteger(status) && status >= 200 && status <= 599 ? { status } : 'status must be an integer 200-599'),
  },
  oversize: {
    usage: '{"bytes": integer >= 1} (token endpoint only)',
    parse: ({ bytes }, endpoint) => {
      if (endpoint !== 'token') return 'oversize applies to the token endpoint only';
      return isPositiveInteger(bytes) ? { bytes } : 'bytes must be an integer >= 1';
    },
  },
};
const FAULT_PARAMS = {
  trickle: ['bytes_per_second'],
  stall: [],
  late: ['ms'],
  replace: ['status', 'body', 'content_type', 'headers', 'process'],
  gzip: ['inflate_to'],
  status: ['status'],
  oversize: ['bytes'],
};

// Returns { rule } or { error }.
function parseFault(body) {
  const usage = `expected {"endpoint": ${FAULT_ENDPOINTS.join('|')}, "mode": ${Object.keys(FAULT_MODES).join('|')}, "count"?: >=1, ...mode parameters}`;
  if (!isObject(body)) return { error: usage };
  const { endpoint, mode, count = 1, ...params } = body;
  if (!FAULT_ENDPOINTS.includes(endpoint)) return { error: `endpoint must be one of ${FAULT_ENDPOINTS.join('|')}; ${usage}` };
  if (!Object.hasOwn(FAULT_MODES, mode)) return { error: `mode must be one of ${Object.keys(FAULT_MODES).join('|')}; ${usage}` };
  if (!isPositiveInteger(count)) return { error: `count must be an integer >= 1; ${usage}` };
  const { usage: modeUsage, parse } = FAULT_MODES[mode];
  const unknown = Object.keys(params).filter((name) => !FAULT_PARAMS[mode].includes(name));
  if (unknown.length > 0) return { error: `unknown parameter(s) for ${mode}: ${unknown.join(', ')}; ${mode} takes ${modeUsage}` };
  const parsed = parse(params, endpoint);
  if (typeof parsed === 'string') return { error: `${parsed}; ${mode} takes ${modeUsage}` };
  return { rule: { endpoint, mode, count, ...parsed } };
}

const EMPTY_STATUS = (status) => (status >= 100 && status < 200) || status === 204 || status === 304;

// The complete HTTP/1.1 answer Koa would have sent for ctx, ending with Connection: close.
function bodyBytes(ctx) {
  const { status, body } = ctx;
  if (body === null || body === undefined || EMPTY_STATUS(status)) return Buffer.alloc(0);
  if (Buffer.isBuffer(body)) return body;
  if (typeof body === 'string') return Buffer.from(body, 'utf8');
  return Buffer.from(JSON.stringify(body), 'utf8');
}

function rawAnswer(ctx) {
  const { status } = ctx;
  const bytes = bodyBytes(ctx);
  const lines = [`HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? 'Unknown'}`];
  const computed = new Set(['content-length', 'transfer-encoding', 'connection', 'keep-alive', 'date']);
  for (const name of ctx.res.getRawHeaderNames()) {
    if (!computed.has(name.toLowerCase())) {
      const value = ctx.res.getHeader(name);
      for (const item of Array.isArray(value) ? value : [value]) lines.push(`${name}: ${item}`);
    }
  }
  lines.push(`Date: ${new Date().toUTCString()}`);
  if (!EMPTY_STATUS(status)) lines.push(`Content-Length: ${bytes.length}`);
  lines.push('Connection: close', '', '');
  return Buffer.concat([Buffer.from(lines.join('\r\n'), 'latin1'), bytes]);
}

// Writes data to the socket at bytesPerSecond, the first byte at once; ends the socket when done.
function trickle(socket, data, bytesPerSecond) {
  const start = Date.now();
  let sent = 0;
  const tick = () => {
    if (socket.destroyed || socket.writableEnded) return;
    const allowed = Math.min(data.length, 1 + Math.floor(((Date.now() - start) * bytesPerSecond) / 1000));
    if (allowed > sent) {
      socket.write(data.subarray(sent, allowed));
      sent = allowed;
    }
    if (sent >= data.length) {
      socket.end();
      return;
    }
    // the allowance reaches sent + 1 at sent / bytesPerSecond seconds after start
    const wait = Math.ceil((sent * 1000) / bytesPerSecond) - (Date.now() - start);
    socket.devidpTimer = setTimeout(tick, Math.max(10, wait));
  };
  tick();
}

// The token answer's fields plus a "padding" string, exactly `size` bytes (or the answer itself
// when it is already longer), written in 64 KiB chunks as fast as the client reads them.
async function writeOversize(res, fields, size) {
  const head = Buffer.from(`${JSON.stringify(fields).slice(0, -1)},"padding":"`, 'utf8');
  const tail = Buffer.from('"}', 'utf8');
  let left = Math.max(0, size - head.length - tail.length);
  let closed = false;
  res.once('close', () => { closed = true; });
  res.writeHead(200, {
    'Content-Type': 'application/json',
    'Content-Length': String(head.length + left + tail.length),
    'Cache-Control': 'no-store',
  });
  const chunk = Buffer.alloc(64 * 1024, 'x');
  let ok = res.write(head);
  while (left > 0 && !closed) {
    if (!ok) {
      // eslint-disable-next-line no-await-in-loop
      await new Promise((resolve) => {
        const done = () => {
          res.off('drain', done);
          res.off('close', done);
          resolve();
        };
        res.on('drain', done);
        res.on('close', done);
      });
      if (closed) break;
    }
    const n = Math.min(left, chunk.length);
    ok = res.write(n === chunk.length ? chunk : chunk.subarray(0, n));
    left -= n;
  }
  if (!closed) res.end(tail);
}

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
  // eslint-disable-next-line no-unused-vars
  const publicJwks = jwks.keys.map(({ d, p, q, dp, dq, qi, oth, key_ops, ...pub }) => pub);
  const ownKeys = jose.createLocalJWKSet({ keys: publicJwks });
  const ownPublicKeys = await Promise.all(publicJwks
    .map((k) => ({ ...k, alg: k.alg ?? { RSA: 'RS256', EC: 'ES256' }[k.kty] }))
    .filter((k) => k.alg === 'RS256' || (k.alg === 'ES256' && k.crv === 'P-256'))
    .map((k) => jose.importJWK(k, k.alg)));

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
    // A token-exchange token says who acted (RFC 8693 act) and, under jit, what the approval said.
    extraTokenClaims: async (_ctx, token) => (
      token.gty === TOKEN_EXCHANGE
        ? { act: { sub: token.clientId }, ...(token.jitContext ? { jit: token.jitContext } : {}) }
        : undefined
    ),
  });

  provider.registerGrantType(
    TOKEN_EXCHANGE,
    makeTokenExchange(config, state, trustedKeys, jwks),
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
  const getRoutes = {
    [provider.pathFor('jwks')]: 'jwks',
    '/.well-known/openid-configuration': 'discovery',
  };
  const injections = {
    delayMs: 0,
    failures: { token: [], revocation: [], introspection: [] },
    faults: Object.fromEntries(FAULT_ENDPOINTS.map((endpoint) => [endpoint, []])),
    held: new Set(), // sockets of stall, trickle and oversize answers in progress
  };

  function countFault(route, mode) {
    state.stats.faults_applied = (state.stats.faults_applied ?? 0) + 1;
    state.stats.faults ??= {};
    state.stats.faults[route] ??= {};
    state.stats.faults[route][mode] = (state.stats.faults[route][mode] ?? 0) + 1;
    state.persist();
  }

  function takeFault(route) {
    const queue = injections.faults[route];
    const rule = queue[0];
    if (!rule) return undefined;
    rule.left -= 1;
    if (rule.left <= 0) queue.shift();
    return rule;
  }

  // Keeps the socket for ourselves: Koa and node:http send nothing more on it.
  function hold(ctx) {
    ctx.respond = false;
    const { socket } = ctx.req;
    if (socket.destroyed) return undefined;
    // Before node:http's own handler, which could write a 400 into the middle of our answer. A
    // client resetting a held connection is expected here: expose keeps Koa from logging the error.
    socket.prependListener('error', (err) => {
      if (err) err.expose = true;
      socket.destroy();
    });
    injections.held.add(socket);
    socket.once('close', () => {
      clearTimeout(socket.devidpTimer);
      injections.held.delete(socket);
    });
    return socket;
  }

  function replaceAnswer(ctx, rule) {
    ctx.respond = false;
    const { res } = ctx;
    if (res.headersSent || res.destroyed || ctx.req.socket.destroyed) return;
    for (const name of res.getHeaderNames()) res.removeHeader(name);
    res.setHeader('Content-Type', rule.content_type);
    for (const [name, value] of Object.entries(rule.headers)) res.setHeader(name, value);
    const body = Buffer.from(rule.body, 'utf8');
    const reason = http.STATUS_CODES[rule.status] ?? 'Unknown';
    if (EMPTY_STATUS(rule.status)) {
      res.writeHead(rule.status, reason);
      res.end();
    } else {
      res.setHeader('Content-Length', String(body.length));
      res.writeHead(rule.status, reason);
      res.end(body);
    }
  }

  async function applyFault(ctx, route, rule) {
    switch (rule.mode) {
      case 'late':
        countFault(route, rule.mode);
        await sleep(rule.ms);
        return;
      case 'replace':
        countFault(route, rule.mode);
        replaceAnswer(ctx, rule);
        return;
      case 'stall':
        countFault(route, rule.mode);
        hold(ctx);
        return;
      case 'trickle': {
        countFault(route, rule.mode);
        const data = rawAnswer(ctx);
        const socket = hold(ctx);
        if (!socket) return;
        socket.once('end', () => socket.destroy()); // the client went away: stop writing
        trickle(socket, data, rule.bytes_per_second);
        return;
      }
      case 'gzip': {
        // The real answer, gzip-compressed although the client asked for identity; inflate_to
        // pads it with spaces (JSON allows trailing white space) so that it decompresses to that size.
        countFault(route, rule.mode);
        const plain = bodyBytes(ctx);
        const padded = rule.inflate_to > plain.length
          ? Buffer.concat([plain, Buffer.alloc(rule.inflate_to - plain.length, 0x20)]) : plain;
        const compressed = gzipSync(padded);
        ctx.respond = false;
        const { res } = ctx;
        if (res.headersSent || res.destroyed) return;
        const type = res.getHeader('Content-Type') ?? 'application/json';
        for (const name of res.getHeaderNames()) res.removeHeader(name);
        res.setHeader('Content-Type', type);
        res.setHeader('Content-Encoding', 'gzip');
        res.setHeader('Content-Length', String(compressed.length));
        res.writeHead(ctx.status, http.STATUS_CODES[ctx.status] ?? 'Unknown');
        res.end(compressed);
        return;
      }
      case 'status':
        // The real answer (a token, for an exchange that worked) under another status code.
        countFault(route, rule.mode);
        ctx.status = rule.status;
        return;
      case 'oversize': {
        const answer = ctx.body;
        // only a successful exchange is blown up; an error answer goes out as it is
        if (ctx.status !== 200 || !isObject(answer) || typeof answer.access_token !== 'string') return;
        countFault(route, rule.mode);
        const socket = hold(ctx);
        if (!socket) return;
        const fields = {
          access_token: answer.access_token,
          token_type: answer.token_type,
          expires_in: answer.expires_in,
          scope: answer.scope,
          issued_token_type: answer.issued_token_type,
        };
        for (const name of ctx.res.getHeaderNames()) ctx.res.removeHeader(name);
        ctx.res.once('finish', () => injections.held.delete(socket));
        writeOversize(ctx.res, fields, rule.bytes).catch(() => socket.destroy());
        return;
      }
      default:
        throw new Error(`unknown fault mode ${rule.mode}`);
    }
  }

  // A token, revocation or introspection request, handled for real (with misbehaviour and delay).
  async function handleEndpoint(ctx, next, route) {
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
        await handleJwtAccessToken(ctx, route, body, config, state, ownKeys, ownPublicKeys, issuer);
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
  }

  provider.use(async (ctx, next) => {
    if (ctx.path.startsWith('/__admin/') && config.admin) {
      if (!isLoopback(ctx.socket.remoteAddress)) {
        ctx.status = 403;
        return;
      }
      await admin(ctx);
      return;
    }

    let route;
    if (ctx.method === 'POST') route = routes[ctx.path];
    else if (ctx.method === 'GET') route = getRoutes[ctx.path];
    if (!route) {
      await next();
      return;
    }

    // A request meets at most one rule: a /__admin/fail rule first, else a /__admin/fault rule.
    const rule = injections.failures[route]?.[0];
    if (rule) {
      rule.count -= 1;
      if (rule.count <= 0) injections.failures[route].shift();
      state.stats.injected_failures += 1;
      state.persist();
      ctx.status = rule.status;
      ctx.set('Cache-Control', 'no-store');
      if (rule.retry_after !== undefined) ctx.set('Retry-After', String(rule.retry_after));
      if (rule.content_type !== undefined || rule.body !== undefined) {
        ctx.set('Content-Type', rule.content_type ?? 'application/json');
      }
      ctx.body = rule.body ?? {
        error: rule.error ?? FAIL_ERRORS[rule.status] ?? (rule.status >= 500 ? 'server_error' : 'invalid_request'),
        error_description: 'failure injected by devidp',
      };
      return;
    }

    const fault = takeFault(route);
    if (fault?.mode === 'replace' && !fault.process) {
      await applyFault(ctx, route, fault);
      return;
    }
    if (route in injections.failures) await handleEndpoint(ctx, next, route);
    else await next();
    if (fault) await applyFault(ctx, route, fault);
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
      case 'GET /__admin/tokens': {
        // What introspection would answer now: opaque tokens live in oidc-provider's AccessToken
        // model (keyed by the token value) until revoked; JWT ones in state.issuedJwts.
        const now = epoch();
        const liveOpaque = new Set(Object.entries(state.models.AccessToken ?? {})
          .filter(([, entry]) => entry.exp === null || entry.exp > now)
          .map(([id]) => sha256(id)));
        ctx.body = state.tokens.map((t) => ({
          sha256: t.sha256,
          active: t.exp > now && (t.format === 'jwt'
            ? state.issuedJwts[t.jti] !== undefined
            : liveOpaque.has(t.sha256)),
          exp: t.exp,
          scope: t.scope,
          audience: t.audience,
          sub: t.sub,
          request_id: t.request_id,
        }));
        return;
      }
      case 'POST /__admin/delay':
        if (!Number.isInteger(body?.ms) || body.ms < 0) {
          ctx.status = 400;
          ctx.body = { error: 'ms must be a non-negative integer' };
          return;
        }
        injections.delayMs = body.ms;
        ctx.body = { ms: injections.delayMs };
        return;
      case 'POST /__admin/fail': {
        const {
          status, count = 1, endpoint = 'token', error, retry_after: retryAfter, body: failBody,
          content_type: contentType,
        } = isObject(body) ? body : {};
        if (!Number.isInteger(status) || status < 400 || status > 599 || !Number.isInteger(count) || count < 1
          || !(endpoint in injections.failures) || (error !== undefined && typeof error !== 'string')
          || (retryAfter !== undefined && (!Number.isSafeInteger(retryAfter) || retryAfter < 0))
          || (failBody !== undefined && typeof failBody !== 'string')
          || (contentType !== undefined && (typeof contentType !== 'string' || !contentType
            || !HEADER_VALUE.test(contentType)))) {
          ctx.status = 400;
          ctx.body = {
            error: 'expected {"status": 400-599, "count": >=1, "endpoint": token|revocation|introspection, "error"?: string, '
              + '"retry_after"?: integer >= 0 (seconds), "body"?: string, "content_type"?: string}',
          };
          return;
        }
        injections.failures[endpoint].push({
          status, count, error, retry_after: retryAfter, body: failBody, content_type: contentType,
        });
        ctx.body = {
          status, count, endpoint, retry_after: retryAfter, body: failBody, content_type: contentType,
        };
        return;
      }
      case 'POST /__admin/fault': {
        const { rule, error } = parseFault(body);
        if (error) {
          ctx.status = 400;
          ctx.body = { error };
          return;
        }
        injections.faults[rule.endpoint].push({ ...rule, left: rule.count });
        ctx.body = rule;
        return;
      }
      case 'POST /__admin/misbehave': {
        const {
          extra_scope: extraScope, expires_in: expiresIn, ignore_revocations: ignoreRevocations, odd_kid: oddKid,
          jwt_claims: jwtClaims,
        } = isObject(body) ? body : {};
        if ((extraScope !== undefined && typeof extraScope !== 'string')
          || (expiresIn !== undefined && !Number.isInteger(expiresIn))
          || (ignoreRevocations !== undefined && !Number.isInteger(ignoreRevocations))
          || (oddKid !== undefined && typeof oddKid !== 'boolean')
          || (jwtClaims !== undefined && !isObject(jwtClaims))) {
          ctx.status = 400;
          ctx.body = {
            error: 'expected {"extra_scope"?: string, "expires_in"?: integer, "ignore_revocations"?: integer, '
              + '"odd_kid"?: boolean, "jwt_claims"?: object}',
          };
          return;
        }
        if (extraScope !== undefined || expiresIn !== undefined || oddKid !== undefined || jwtClaims !== undefined) {
          misbehaviour.next = {
            extra_scope: extraScope, expires_in: expiresIn, odd_kid: oddKid, jwt_claims: jwtClaims,
          };
        }
        if (ignoreRevocations !== undefined) misbehaviour.ignoreRevocations = ignoreRevocations;
        ctx.body = { next: misbehaviour.next, ignore_revocations: misbehaviour.ignoreRevocations };
        return;
      }
      case 'POST /__admin/reset':
        misbehaviour.next = null;
        misbehaviour.ignoreRevocations = 0;
        state.stats = emptyStats();
        state.lastAssertion = null;
        injections.delayMs = 0;
        for (const key of Object.keys(injections.failures)) injections.failures[key] = [];
        for (const key of Object.keys(injections.faults)) injections.faults[key] = [];
        const released = injections.held.size;
        for (const socket of injections.held) socket.destroy();
        injections.held.clear();
        state.persist();
        ctx.body = { reset: true, released };
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
