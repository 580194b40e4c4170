"""Export a synthesized model and run it with onnxruntime on the MNIST test set.

    nestir synthesize lenet-300-100 --out runs/quickstart      # or bash scripts/quickstart.sh
    python examples/onnx_inference.py runs/quickstart/model.onnx
"""

import sys

import numpy as np
import onnx
import onnxruntime as ort

from nestir.data import load_idx

path = sys.argv[1] if len(sys.argv) > 1 else "runs/quickstart/model.onnx"
model = onnx.load(path)
onnx.checker.check_model(model)
size = sum(int(np.count_nonzero(onnx.numpy_helper.to_array(t))) for t in model.graph.initializer)
print(f"{path}: {size} non-zero initializer values")

test = load_idx(sys.argv[2] if len(sys.argv) > 2 else "../shared/data/mnist", "test")
sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
logits = sess.run(None, {"input": test.x.numpy()})[0]
print(f"test error: {100 * float((logits.argmax(1) != test.y.numpy()).mean()):.2f}%")
