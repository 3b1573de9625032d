// A real OpenID Provider for Cairn's tests: panva's certified `oidc-provider`, on loopback.
//
// Environment:
//   OP_PORT       port to listen on (127.0.0.1); 0 or unset: one the kernel chooses. The issuer
//                 (http://127.0.0.1:<port>) follows the port, and is printed once it listens:
//                 "listening <issuer> kid=<kid>" on standard error.
//   OP_KID        key id of the RS256 signing key generated at start (rotation = restart with a new kid)
//   OP_ACCOUNTS   JSON {"alice": {"groups": ["sre"]}, ...}: who may sign in, and their groups claim
//   OP_CLIENT_ID  the public client `cairn login` uses (loopback redirect, PKCE, refresh tokens)
//   OP_ID_TTL     ID token lifetime in seconds (default 600)
//
// Sign-in is this file's own two-route interaction (no password: the tests name the account):
//   GET  /interaction/:uid          a form
//   POST /interaction/:uid/login    login=<account> [amr=pwd,otp]: signs in and consents to what was asked
// Test-only route, for tokens a real provider would never mint (expired, foreign issuer, wrong
// audience), signed with the provider's own current key:
//   POST /_test/mint {claims}       -> compact JWS
import http from 'node:http';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';
import * as jose from 'jose';

const port = Number(process.env.OP_PORT || 0);
const kid = process.env.OP_KID || 'k1';
const accounts = JSON.parse(process.env.OP_ACCOUNTS || '{}');
const clientId = process.env.OP_CLIENT_ID || 'cairn-cli';
const idTtl = Number(process.env.OP_ID_TTL || 600);
// Each step of the start names itself on standard error, so a start that stalls says where.
const t0 = Date.now();
const step = (what) => process.stderr.write(`op: ${what} (+${Date.now() - t0} ms)\n`);
step('modules loaded');

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
step('key generated');
const jwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };

// Listen before the issuer is known: with port 0 the kernel picks the port, so no test can have
// taken it between a pick and the bind. Nothing connects before the line below names the port.
const server = http.createServer((req, res) => handle(req, res));
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;
step(`bound ${issuer}`);

const provider = new Provider(issuer, {
  jwks: { keys: [jwk] },
  clients: [{
    client_id: clientId,
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    redirect_uris: ['http://127.0.0.1/callback'],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    require_auth_time: true,
    id_token_signed_response_alg: 'RS256',
  }],
  scopes: ['openid', 'offline_access', 'groups'],
  claims: { openid: ['sub', 'amr'], groups: ['groups'] },
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  ttl: { IdToken: idTtl, AccessToken: idTtl },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  // Offer refresh tokens to the native client whenever offline_access was asked for.
  issueRefreshToken: async (ctx, client, code) => client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
  async findAccount(ctx, id) {
    if (!accounts[id]) return undefined;
    return { accountId: id, async claims() { return { sub: id, groups: accounts[id].groups || [] }; } };
  },
});
provider.proxy = false;

function form(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.on('data', (c) => { body += c; if (body.length > 65536) reject(new Error('too large')); });
    req.on('end', () => resolve(Object.fromEntries(new URLSearchParams(body))));
  });
}


const callback = provider.callback();
async function handle(req, res) {
  try {
    const url = new URL(req.url, issuer);
    const m = url.pathname.match(/^\/interaction\/([^/]+)(\/login)?$/);
    if (m && req.method === 'GET' && !m[2]) {
      const details = await provider.interactionDetails(req, res);
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end(`<form method="post" action="/interaction/${details.uid}/login"><input name="login"><button>Sign in</button></form>`);
      return;
    }
    if (m && req.method === 'POST' && m[2]) {
      const details = await provider.interactionDetails(req, res);
      const body = await form(req);
      if (!accounts[body.login]) {
        res.writeHead(403, { 'content-type': 'text/plain' });
        res.end(`no account ${body.login}`);
        return;
      }
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: body.login, clientId: details.params.client_id });
      grant.addOIDCScope(String(details.params.scope || 'openid'));
      const grantId = await grant.save();
      const amr = String(body.amr || 'pwd').split(',');
      await provider.interactionFinished(req, res, { login: { accountId: body.login, amr }, consent: { grantId } }, { mergeWithLastSubmission: false });
      return;
    }
    if (url.pathname === '/_test/mint' && req.method === 'POST') {
      let raw = '';
      for await (const c of req) raw += c;
      const claims = JSON.parse(raw);
      const key = await jose.importJWK(jwk, 'RS256');
      const token = await new jose.SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid, typ: 'JWT' }).sign(key);
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(token);
      return;
    }
    callback(req, res);
  } catch (e) {
    res.writeHead(500, { 'content-type': 'text/plain' });
    res.end(String(e && e.stack || e));
  }
}
process.stderr.write(`listening ${issuer} kid=${kid}\n`);
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)));
