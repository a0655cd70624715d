"""``herald-delivery``: sends the email and Web Push jobs the worker publishes to ``herald.deliveries``."""
