"""Synthesize a compact LeNet-300-100 on the embedded mnist5k data with the Python API.

    python examples/quickstart.py            # ~15 s on 2 CPU cores
"""

import nestir
from nestir.runs import RunSpec, final_metrics, prepare
from nestir.synthesis import SynthConfig, Synthesizer

# A sparse seed (784-30-20-10, half the connections, leaky ReLU), the mnist5k split, defaults.
prep = prepare(RunSpec(model="lenet-300-100", data="mnist5k"))
cfg = SynthConfig(**prep.defaults)  # budget S = 266,610 params, target validation accuracy A
synth = Synthesizer(prep.graph, prep.train, prep.val, cfg, out="runs/example-quickstart")
state = synth.run()  # grow until A (or S), shift leaky ReLU -> ReLU, prune while accuracy >= A

print(nestir.stats(synth.graph)["params"], "live parameters")
print(final_metrics(synth.graph, prep, synth.dev))
synth.graph.to_onnx("runs/example-quickstart/lenet.onnx")
