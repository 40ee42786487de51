"""The documented import path of the light client: ``from nitrogen.client import ModelClient``.

The client lives in :mod:`nitrogen.serving.client`; this alias keeps user code working and, like
it, imports no torch.
"""

from .serving.client import DEFAULT_ADDRESS, ModelClient, ServerError

__all__ = ["DEFAULT_ADDRESS", "ModelClient", "ServerError"]
