"""The IdP side: our signing key and JWKS, subject assertions, discovery, token exchange, revocation."""
