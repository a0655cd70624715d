"""Herald's shared leaf package: settings, models, topology names, logging, process start-up, producer
and client helpers.

Nothing here imports from ``worker`` or ``gateway``.
"""

__version__ = "0.1.0"
