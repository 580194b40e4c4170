"""The IR core: the graph and its nodes, one definition per op (``opdefs``), neuron groups,
edits, the verifier, size and cost (``stats``), compaction, the interpreter that runs a graph,
and the file format. It imports nothing above it: no frontend, backend, pass, driver or CLI."""
