// Verifies a twinward twin credential with an implementation independent of the gateway:
// jose's remote JWKS (fetched over HTTP from the gateway) and jwtVerify.
//
//   node verify-jwt.mjs <jwks-url> <token> <expected-issuer> <expected-audience>
//
// Prints the verified payload as one JSON line and exits 0; prints the error and exits 1.
import { createRemoteJWKSet, jwtVerify } from 'jose';

const [jwksUrl, token, issuer, audience] = process.argv.slice(2);
if (!jwksUrl || !token || !issuer || !audience) {
  console.error('usage: node verify-jwt.mjs <jwks-url> <token> <expected-issuer> <expected-audience>');
  process.exit(2);
}

try {
  const jwks = createRemoteJWKSet(new URL(jwksUrl), { cooldownDuration: 0, cacheMaxAge: 0 });
  const { payload } = await jwtVerify(token, jwks, {
    issuer,
    audience,
    algorithms: ['EdDSA', 'ES256'],
    typ: 'JWT',
    requiredClaims: ['sub', 'exp', 'iat', 'nbf', 'jti'],
  });
  console.log(JSON.stringify(payload));
  process.exit(0);
} catch (e) {
  console.error(`${e?.code ?? 'ERROR'}: ${e?.message ?? e}`);
  process.exit(1);
}
