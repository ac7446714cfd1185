"""The sources of batches, one per Bland API, each behind the ``BatchSource`` protocol.

The v1 batches API lives in :mod:`batchsync.client`; :mod:`batchsync.bland.v2` reads the
v2 batches API and the calls API; :mod:`batchsync.bland.auto` reads both for an account
that holds both kinds.
"""
