"""The fleet: GPU pools and nodes, deployments and their replicas.

- ``placement``: the scheduler, a pure function (binpack or spread, TP groups on one node).
- ``reconcile``: the reconciler's pure decisions (scale, rolling update, drain, lost nodes).
- ``reconciler``: their effects on the database and the agents (``reconcile_once``,
  ``handle_node_report``); ``tasks`` runs them on Celery queue ``fleet``.
- ``services``: every mutation (pools, nodes, deployments, manifests), audited.
- ``artifacts``: fetching model files into the model cache (``workers.artifacts``).
"""
