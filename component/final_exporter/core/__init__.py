"""The export core, with no TFX types: parameters, gating, lineage, the export itself.

It uses the storage layer for every byte it moves and the serving checks for
every check it runs; it never branches on the kind of storage.
"""
