"""Serving: the msgpack wire protocol, the ZeroMQ server (sessions, batching, CURVE), the light
torch-free client, CURVE keys, and the restricted unpickler for the original Windows client."""
