"""One sender per way of delivering: ``email`` (SMTP) and ``webpush``; see :mod:`.base` for the interface."""
