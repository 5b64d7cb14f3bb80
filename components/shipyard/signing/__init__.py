"""Signed versions: the OpenSSF `model-signing` library, behind a small interface of ours.

keys.py reads the PEM files (a private key, a certificate chain, a trust key) and names them by
fingerprint; bundle.py signs a version directory and verifies it with model-signing's own
signer and verifier. Nothing here re-implements a check: a version passes or fails by what
model-signing says.
"""
