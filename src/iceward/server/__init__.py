"""The composition root of ``iceward serve``: settings become a plan, the plan a server.

- :mod:`iceward.server.serve`: ``build`` and ``run``, the whole of ``iceward serve``;
- :mod:`iceward.server.plan`: settings turned into typed runtime values, once;
- :mod:`iceward.server.single`: one process relays, mints and serves HTTP;
- :mod:`iceward.server.workers`: a supervisor of N relaying workers;
- :mod:`iceward.server.worker`: a relaying worker, its half of the control protocol (it imports
  no HTTP stack: every worker pays for what it loads);
- :mod:`iceward.server.process`: what a relaying process composes (the engine of
  :mod:`iceward.net.engine`, credentials kept in step with the store, the tick);
- :mod:`iceward.server.http`: the API's and the test page's routes on one embedded uvicorn.

Nothing is imported here: a worker imports this package on its way to its own module.
"""
