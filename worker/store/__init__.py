"""All of the worker's SQL: one module per area, each function taking a pool or connection.

``pool`` builds the pool and classifies outage errors; ``catalog`` reads ``notification_types``;
``notifications`` is the column list and row shape every read shares; ``events`` stores event batches,
``broadcasts`` a broadcast chunk by chunk; ``inbox`` and ``preferences`` serve the request methods;
``retention`` deletes old rows.
"""
