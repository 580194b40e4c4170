"""Export a synthesized model and run it with onnxruntime on the MNIST test set.

    nestir synthesize lenet-300-100 --out runs/quickstart      # or bash scripts/quickstart.sh
    python examples/onnx_inference.py runs/quickstart/model.onnx
"""

import sys

import numpy as np
import onnx
import onnxruntime as ort

from nestir.driver.data import load_idx

path = sys.argv[1] if len(sys.argv) > 1 else "runs/quickstart/model.onnx"
model = onnx.load(path)
onnx.checker.check_model(model)
# pruned weights are stored as sparse initializers (values and indices), the rest dense
dense = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer]
sparse = [onnx.numpy_helper.to_array(t.values) for t in model.graph.sparse_initializer]
size = sum(int(np.count_nonzero(a)) for a in dense + sparse)
print(f"{path}: {size} non-zero initializer values ({len(sparse)} weights stored sparse)")

test = load_idx(sys.argv[2] if len(sys.argv) > 2 else "../shared/data/mnist", "test")
sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
logits = sess.run(None, {"input": test.x.numpy()})[0]
print(f"test error: {100 * float((logits.argmax(1) != test.y.numpy()).mean()):.2f}%")
