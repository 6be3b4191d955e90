// A real OpenID provider (panva/oidc-provider) for citadel-authz's end-to-end tests.
//
// Usage: node idp.mjs [PORT]        (or IDP_PORT=PORT; 0 or absent = pick a free port)
//   IDP_KEYS_FILE=/path/keys.json   private signing keys (JWK set). Read when the file exists,
//                                   else generated and written there, so a restart on the same
//                                   file keeps the keys and a restart on a new file rotates them.
//
// Listens on 127.0.0.1 only; the issuer is http://127.0.0.1:PORT. Prints `READY <port>` on stdout
// once it accepts connections.
//
// Clients (client_credentials, client_secret_basic or client_secret_post), each issuing JWT
// access tokens (typ at+jwt) for resource `urn:citadel:api` (audience `api`), the default
// resource, signed with its own algorithm and carrying `tenant_id` and `roles` claims:
//   svc-es256 / secret-es256   ES256   tenant acme    roles [reader, member]
//   svc-rs256 / secret-rs256   RS256   tenant globex  roles [orders:write]
//   svc-eddsa / secret-eddsa   EdDSA   tenant acme    roles [admin, member]
//   svc-noroles / secret-noroles ES256 tenant acme    roles []
// Discovery is at /.well-known/openid-configuration, the key set at /jwks (both oidc-provider's).
//
// Opaque tokens (SPEC §9): the same clients asking for resource `urn:citadel:opaque`
// (`resource=urn:citadel:opaque` in the token request) get an opaque access token for audience
// `api`, carrying the same `tenant_id` and `roles` in its introspection answer. Introspection is
// at /token/introspection, revocation at /token/revocation (RFC 7009; a client revokes its own
// tokens). citadel-authz authenticates to introspection as `citadel-authz` / `secret-citadel-authz`
// (client_secret_basic) or `citadel-authz-post` / `secret-citadel-authz-post` (client_secret_post).
// oidc-provider introspects and revokes opaque tokens only: a structured (JWT) access token is
// refused there with 400 unsupported_token_type.
//
// oidc-provider's development defaults (in-memory adapter) are fine here: this process lives
// for one test. It is never meant to run anywhere but loopback.

import { createServer } from 'node:http';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';

import { exportJWK, generateKeyPair } from 'jose';
import Provider, { errors } from 'oidc-provider';

export const RESOURCE = 'urn:citadel:api';
export const OPAQUE_RESOURCE = 'urn:citadel:opaque';
export const AUDIENCE = 'api';

export const CLIENTS = {
  'svc-es256': { secret: 'secret-es256', alg: 'ES256', tenant: 'acme', roles: ['reader', 'member'], auth: 'client_secret_basic' },
  'svc-rs256': { secret: 'secret-rs256', alg: 'RS256', tenant: 'globex', roles: ['orders:write'], auth: 'client_secret_post' },
  'svc-eddsa': { secret: 'secret-eddsa', alg: 'EdDSA', tenant: 'acme', roles: ['admin', 'member'], auth: 'client_secret_basic' },
  'svc-noroles': { secret: 'secret-noroles', alg: 'ES256', tenant: 'acme', roles: [], auth: 'client_secret_basic' },
};

async function newKey(alg, opts) {
  const { privateKey } = await generateKeyPair(alg, { extractable: true, ...opts });
  const jwk = await exportJWK(privateKey);
  // `alg` on the key: a verifier must refuse the key for any other algorithm.
  return { ...jwk, alg, use: 'sig' };
}

async function signingKeys(file) {
  if (file && existsSync(file)) {
    return JSON.parse(readFileSync(file, 'utf8'));
  }
  const jwks = {
    keys: [
      await newKey('ES256'),
      await newKey('RS256', { modulusLength: 2048 }),
      await newKey('EdDSA', { crv: 'Ed25519' }),
    ],
  };
  if (file) {
    writeFileSync(file, JSON.stringify(jwks), { mode: 0o600 });
  }
  return jwks;
}

function listen(server, port) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server.address().port));
  });
}

const requested = Number(process.argv[2] ?? process.env.IDP_PORT ?? 0);
if (!Number.isInteger(requested) || requested < 0 || requested > 65535) {
  console.error(`idp: bad port ${process.argv[2] ?? process.env.IDP_PORT}`);
  process.exit(2);
}

const jwks = await signingKeys(process.env.IDP_KEYS_FILE);

// Bind first: the issuer URL must name the port, which is only known once bound (port 0).
let handler = (_req, res) => {
  res.statusCode = 503;
  res.end();
};
const server = createServer((req, res) => handler(req, res));
const port = await listen(server, requested);
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  jwks,
  clients: [
    ...Object.entries(CLIENTS).map(([id, c]) => ({
      client_id: id,
      client_secret: c.secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: c.auth,
    })),
    // Resource-server clients: they only introspect.
    ...[
      ['citadel-authz', 'secret-citadel-authz', 'client_secret_basic'],
      ['citadel-authz-post', 'secret-citadel-authz-post', 'client_secret_post'],
    ].map(([id, secret, auth]) => ({
      client_id: id,
      client_secret: secret,
      grant_types: [],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: auth,
      introspection_endpoint_auth_method: auth,
      revocation_endpoint_auth_method: auth,
    })),
  ],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resourceIndicator, client) => {
        if (resourceIndicator === OPAQUE_RESOURCE) {
          return { scope: 'api', audience: AUDIENCE, accessTokenTTL: 600, accessTokenFormat: 'opaque' };
        }
        if (resourceIndicator !== RESOURCE) {
          throw new errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
        }
        return {
          scope: 'api',
          audience: AUDIENCE,
          accessTokenTTL: 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: CLIENTS[client.clientId].alg } },
        };
      },
    },
  },
  extraTokenClaims: (_ctx, token) => {
    const c = CLIENTS[token.clientId];
    return c ? { tenant_id: c.tenant, roles: c.roles } : undefined;
  },
});
provider.on('server_error', (_ctx, err) => console.error('idp: server_error', err));
provider.on('grant.error', (_ctx, err) => console.error('idp: grant.error', err.message, err.error_description ?? ''));

handler = provider.callback();
console.log(`READY ${port}`);

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
