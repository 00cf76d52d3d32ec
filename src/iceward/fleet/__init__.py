"""A fleet of ``iceward serve`` nodes sharing one Redis (``--cluster``).

- :mod:`iceward.fleet.node`: what a node publishes each heartbeat (:class:`NodeInfo`);
- :mod:`iceward.fleet.choose`: which nodes an issuer hands out, from a snapshot of the fleet;
- :mod:`iceward.fleet.regions`: a client address's region (region map, MaxMind database);
- :mod:`iceward.fleet.alternates`: the node a draining node redirects new allocations to;
- :mod:`iceward.fleet.member`: this node's membership: heartbeat, the fleet as last read,
  Redis outages survived;
- :mod:`iceward.fleet.command`: ``iceward fleet``.
"""
