"""What a point records about its server's descriptor budget: a storm past it is a result.

`descriptor_limit(server, client_docs)` is point.json's ``descriptor_limit`` section: the limit
(the server's soft RLIMIT_NOFILE), the budget (connections it admits at most), how many
connections it admitted and refused, how many clients saw their handshake refused, accept
failures, and what its connection gate and the store's descriptor reserve did. The verdict
``descriptor_limit`` is given when connections were refused or an accept failed.
"""

from __future__ import annotations

from typing import Any


def descriptor_limit(server: dict[str, Any], client_docs: list[dict[str, Any]]) -> dict[str, Any]:
    """point.json's ``descriptor_limit`` section from the server's stats and client.json files."""
    connections = server.get("connections", {})
    refused = connections.get("refused", 0)
    accept_failed = connections.get("accept_failed", {})
    return {
        "reached": bool(refused or accept_failed),
        "limit": server.get("rlimit_nofile", {}).get("soft", connections.get("limit")),
        "budget": connections.get("max_connections"),
        "admitted": connections.get("admitted"),
        "peak_admitted": connections.get("peak_admitted"),
        "refused": refused,
        "clients_refused": sum(doc.get("refused", 0) for doc in client_docs),
        "accept_failed": accept_failed,
        "peak_connections": connections.get("peak"),
        "gate": connections.get("gate"),
        "store_descriptors": server.get("store_descriptors"),
    }
