"""The sources of batches, one per Bland API, each behind the ``BatchSource`` protocol.

:mod:`batchsync.bland.source` holds the protocol and the types every source gives the sync;
:mod:`batchsync.bland.http` the one HTTP client they share (auth, retries, rate cap, error
mapping, body reading). :mod:`batchsync.bland.v1` reads the v1 batches API;
:mod:`batchsync.bland.v2` the v2 batches API and the calls API; :mod:`batchsync.bland.auto`
reads both for an account that holds both kinds, and builds the source a run uses.
"""
