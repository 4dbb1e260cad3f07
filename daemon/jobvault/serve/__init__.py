"""Serving other local tools: the Unix socket (JSON-RPC 2.0), its methods and the client."""
