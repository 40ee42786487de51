"""The documented import path of CURVE keys: ``from nitrogen.keys import ClientCurve``.

The keys live in :mod:`nitrogen.serving.keys`; this alias keeps user code working.
"""

from .serving.keys import ClientCurve, CurveKeys, KeyPaths, generate_keys, load_keypair, load_public

__all__ = ["ClientCurve", "CurveKeys", "KeyPaths", "generate_keys", "load_keypair", "load_public"]
