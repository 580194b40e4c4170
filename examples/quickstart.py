"""Synthesize a compact LeNet-300-100 on the embedded mnist5k data with the Python API.

    python examples/quickstart.py            # a few minutes on 2 CPU cores
"""

import nestir
from nestir.driver.runs import RunSpec, dense_reference, final_metrics, prepare
from nestir.driver.synthesis import SynthConfig, Synthesizer

# A sparse seed (784-30-20-10, half the connections, leaky ReLU); mnist5k split into
# train / validation (every decision) / audit (read once at the end); defaults.
spec = RunSpec(model="lenet-300-100", data="mnist5k", seed=0)
prep = prepare(spec)
cfg = SynthConfig(**prep.defaults)  # budget S = 266,610 params; decisions paired with the dense reference
# The dense reference under the same recipe: the teacher for distillation and the yardstick of every decision.
dense = dense_reference(prep, spec, cfg, dense_epochs=40)
synth = Synthesizer(prep.graph, prep.splits, cfg, out="runs/example-quickstart", teacher=dense["teacher"])
state = synth.run()  # grow, shift leaky ReLU -> ReLU, pruning chain, selection, final training

print(nestir.stats(synth.graph)["params"], "live parameters")
print("dense:", {k: dense["final"][k] for k in ("params", "val_error", "audit_error")})
m = final_metrics(synth.graph, prep, synth.dev, val_error=synth.selection["val_error"])
print("NeST: ", {k: m[k] for k in ("params", "val_error", "audit_error")})
synth.graph.to_onnx("runs/example-quickstart/lenet.onnx")
