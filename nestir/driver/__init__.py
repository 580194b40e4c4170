"""The driver: the synthesis flow (growth, pruning chain, selection, final training), its recipe,
data and run directories, the Python API (``nestir.synthesize``, ``nestir.apply``) and the
benchmarked zoo of models."""
