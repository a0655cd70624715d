"""``herald-delivery``: sends the email and Web Push jobs the worker records in ``delivery_jobs`` (and the
ones other services publish to ``herald.deliveries``)."""
