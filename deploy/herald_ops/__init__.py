"""Operator tooling: the ``herald`` command and the local-stack harness.

Modules:
    cli       the ``herald`` console script and its subcommands
    dev       ``herald dev``: migrate + worker + gateway in the foreground
    migrate   ``herald migrate``: apply ``sql/`` once each, under an advisory lock
    dlq       ``herald dlq list|replay|purge``
    testing   isolated stacks (vhost + database + real processes) for the tests and the benchmarks

It sits above ``shared``, ``worker`` and ``gateway``: it may start them, nothing in them imports it.
"""
