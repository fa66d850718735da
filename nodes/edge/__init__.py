"""The edge: the node's HTTP port for browsers and other non-ZeroMQ clients
(WebSocket, Server-Sent Events, HTTP publish and requests, the console).
The Edge itself (what it owns and wires) is in :mod:`nodes.edge.edge`."""
