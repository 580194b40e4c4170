"""onnxruntime latency of compacted (pruned + lowered) models vs their dense originals, and what
partial-area convolution and CSR weights buy.

Models are pruned structurally here (magnitude-prune with neuron_fraction + dead-neuron
elimination, no retraining: latency does not depend on the weights' values) to about 1/20 of
their parameters (LeNets) or by channels (the residual CNN).

Run: python benchmarks/latency.py  -> results/latency.json, results/latency.md
     python benchmarks/latency.py --storage-only  (the ONNX storage table alone, merged in)"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import onnxruntime as ort
import torch

import nestir
from nestir.backends.modules import CSRLinear
from nestir.driver.zoo import ZOO
from nestir.passinfra.base import PassContext, PassManager, resolve

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleaved, machine, save  # noqa: E402


def prune_to(g: nestir.Graph, data, target: float, pipeline: list[str]) -> nestir.Graph:
    p0 = nestir.stats(g)["params"]
    for _ in range(60):
        if nestir.stats(g)["params"] <= p0 * target:
            break
        PassManager(resolve(pipeline)).run(g, PassContext(data=data))
    return g


def dense_equivalent_flops(g: nestir.Graph) -> int:
    from nestir.backends.lower_torch import prepare

    c = prepare(g, compact=True)
    for n in c.parametric():
        n.params["mask"] = torch.ones_like(n.params["mask"])
        n.params.pop("area", None)
    return nestir.stats(c, compact=False)["flops"]


def ort_latency(paths: dict[str, str], shape: tuple[int, ...]) -> dict[str, float]:
    out = {}
    for threads in (1, 2):
        sessions = {}
        for k, p in paths.items():
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            sessions[k] = ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])
        for batch in (1, 256):
            x = np.random.rand(batch, *shape).astype(np.float32)
            fns = {k: (lambda s=s, x=x: s.run(None, {"input": x})) for k, s in sessions.items()}
            t = interleaved(fns, repeats=30 if batch == 256 else 200, warmup=5)
            for k, v in t.items():
                out[f"{k}|threads={threads}|batch={batch}"] = v
    return out


def case(name: str, g_dense: nestir.Graph, g_small: nestir.Graph, shape: tuple[int, ...], d: str) -> dict:
    paths = {"dense": os.path.join(d, f"{name}-dense.onnx"), "compact": os.path.join(d, f"{name}-compact.onnx")}
    g_dense.to_onnx(paths["dense"])
    g_small.to_onnx(paths["compact"])
    lat = ort_latency(paths, shape)
    sd, sc = nestir.stats(g_dense), nestir.stats(g_small)
    dfl = dense_equivalent_flops(g_small)
    res = {"params_dense": sd["params"], "params_compact": sc["params"],
           "params_reduction": sd["params"] / sc["params"],
           "flops_dense": sd["flops"], "flops_compact": sc["flops"], "flops_reduction": sd["flops"] / sc["flops"],
           "dense_equivalent_flops_compact": dfl, "dense_equivalent_flops_reduction": sd["flops"] / dfl,
           "latency_s": lat, "layers": [(r["name"], r["layer"]) for r in sc["layers"]]}
    for threads in (1, 2):
        for batch in (1, 256):
            k = f"threads={threads}|batch={batch}"
            res[f"speedup|{k}"] = lat[f"dense|{k}"] / lat[f"compact|{k}"]
    half = 0.5 * res["dense_equivalent_flops_reduction"]
    res["target_met_batch256"] = all(res[f"speedup|threads={t}|batch=256"] >= half for t in (1, 2))
    return res


def synthesized(name: str) -> tuple[nestir.Graph, nestir.Graph]:
    """The dense model and a NeST synthesis of it (default settings, mnist5k)."""
    from nestir.driver.runs import RunSpec, dense_reference, prepare
    from nestir.driver.synthesis import SynthConfig, Synthesizer

    spec = RunSpec(model=name)
    prep = prepare(spec)
    cfg = SynthConfig(**prep.defaults)
    dense = dense_reference(prep, spec, cfg, dense_epochs=40)
    with tempfile.TemporaryDirectory() as out:
        s = Synthesizer(prep.graph, prep.splits, cfg, out, teacher=dense["teacher"], ensemble=dense["ensemble"])
        s.run()
    dense = nestir.trace(ZOO[name].factory(), torch.rand(2, 1, 28, 28))
    return dense, s.graph.to("cpu")


def partial_area(d: str) -> dict:
    """LeNet-5 with half of every conv's (in, out, position) triples masked: FLOPs saved, and
    latency of the partial-area lowering vs the same conv lowered dense (area ignored)."""
    torch.manual_seed(0)
    g = nestir.trace(ZOO["lenet-5"].factory(), torch.rand(2, 1, 28, 28))
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    PassManager(resolve(["partial-area-mask:fraction=0.5"])).run(g, PassContext(data=[(x, y)]))
    plain = g.copy()
    for n in plain.parametric():
        n.params.pop("area", None)
    paths = {"partial_area": os.path.join(d, "pa.onnx"), "plain_conv": os.path.join(d, "plain.onnx")}
    g.to_onnx(paths["partial_area"])
    plain.to_onnx(paths["plain_conv"])
    lat = ort_latency(paths, (1, 28, 28))
    conv_flops = lambda gg: sum(r["flops"] for r in nestir.stats(gg)["layers"] if r["name"].startswith("conv"))
    mod_pa, mod_plain = g.to_torch(), plain.to_torch()
    xb = torch.rand(256, 1, 28, 28)
    with torch.no_grad():
        tt = interleaved({"torch_partial_area": lambda: mod_pa(xb), "torch_plain_conv": lambda: mod_plain(xb)}, 20)
    return {"conv_flops_plain": conv_flops(plain), "conv_flops_partial_area": conv_flops(g),
            "ort_latency_s": lat, "torch_latency_s_batch256": tt}


def csr() -> dict:
    """Dense vs CSR 784x300 linear in PyTorch at batch 256, by density."""
    out = {}
    x = torch.rand(256, 784)
    for density in (0.5, 0.2, 0.1, 0.05, 0.02):
        w = torch.randn(300, 784) * (torch.rand(300, 784) < density)
        dense, sparse = torch.nn.Linear(784, 300), CSRLinear(w, torch.zeros(300))
        with torch.no_grad():
            dense.weight.copy_(w)
            t = interleaved({"dense": lambda d=dense: d(x), "csr": lambda s=sparse: s(x)}, 50)
        out[str(density)] = {"dense_s": t["dense"], "csr_s": t["csr"], "csr_speedup": t["dense"] / t["csr"]}
    return out


STORAGE_TITLE = "ONNX storage of unstructured sparsity (magnitude-prune, each layer to the density, no retraining):"


def storage(d: str) -> dict:
    """Unstructured sparsity in the ONNX file: the default file (weights at most a quarter non-zero
    stored as ONNX sparse initializers) vs every weight stored dense, by density: file size,
    session creation (load) time and inference latency in onnxruntime, outputs compared."""
    out: dict = {}
    x = torch.rand(256, 1, 28, 28)
    for name in ("lenet-300-100", "lenet-5"):
        torch.manual_seed(0)
        g0 = nestir.trace(ZOO[name].factory(), x[:2])
        for density in (0.5, 0.2, 0.1, 0.05, 0.02):
            g = nestir.apply(g0, [f"magnitude-prune:fraction={1 - density},scope=layer"])  # every layer keeps some
            paths = {"sparse_storage": os.path.join(d, f"{name}-{density}-s.onnx"),
                     "dense_storage": os.path.join(d, f"{name}-{density}-d.onnx")}
            g.to_onnx(paths["sparse_storage"])
            g.to_onnx(paths["dense_storage"], sparse_storage="never")
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            load = interleaved({k: (lambda p=p, so=so: ort.InferenceSession(p, so, providers=["CPUExecutionProvider"]))
                                for k, p in paths.items()}, repeats=15, warmup=2)
            sess = {k: ort.InferenceSession(p, so, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
            xb = x.numpy()
            outs = {k: s.run(None, {"input": xb})[0] for k, s in sess.items()}
            run = interleaved({k: (lambda s=s, xb=xb: s.run(None, {"input": xb})) for k, s in sess.items()}, repeats=30)
            size = {k: os.path.getsize(p) for k, p in paths.items()}
            out[f"{name}|{density}"] = {
                "params": nestir.stats(g)["params"], "bytes": size,
                "size_ratio": size["sparse_storage"] / size["dense_storage"], "load_s": load,
                "inference_s_batch256_1thread": run,
                "max_abs_diff": float(np.abs(outs["sparse_storage"] - outs["dense_storage"]).max())}
    return out


def storage_table(st: dict) -> list[str]:
    lines = ["| model, density | file: sparse / dense storage | size ratio | load (ms): sparse / dense | "
             "inference b=256, 1 thread (ms): sparse / dense | max |diff| |",
             "|---|---:|---:|---:|---:|---:|"]
    for k, r in st.items():
        b, ld, inf = r["bytes"], r["load_s"], r["inference_s_batch256_1thread"]
        lines.append(f"| {k.replace('|', ', ')} | {b['sparse_storage'] / 1e3:.0f} KB / "
                     f"{b['dense_storage'] / 1e3:.0f} KB | {r['size_ratio']:.2f} | "
                     f"{1e3 * ld['sparse_storage']:.1f} / {1e3 * ld['dense_storage']:.1f} | "
                     f"{1e3 * inf['sparse_storage']:.2f} / {1e3 * inf['dense_storage']:.2f} | "
                     f"{r['max_abs_diff']:.1e} |")
    return lines


def main() -> None:
    if "--storage-only" in sys.argv:  # only the ONNX storage table, merged into the saved results
        from common import load_results

        results = load_results("latency.json")
        with tempfile.TemporaryDirectory() as d:
            results["onnx_sparse_storage"] = storage(d)
        save("latency.json", results)
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "latency.md")
        with open(path) as f:
            md = f.read().split("\n\nONNX storage")[0].rstrip("\n")
        md += f"\n\n{STORAGE_TITLE}\n\n"
        md += "\n".join(storage_table(results["onnx_sparse_storage"]))
        with open(path, "w") as f:
            f.write(md + "\n")
        print(md)
        return
    torch.manual_seed(0)
    results: dict = {"machine": machine(), "onnxruntime": ort.__version__}
    with tempfile.TemporaryDirectory() as d:
        x, y = torch.rand(256, 1, 28, 28), torch.randint(0, 10, (256,))
        for name, frac in (("lenet-300-100", 0.05), ("lenet-5", 0.05)):
            g = nestir.trace(ZOO[name].factory(), x[:2])
            small = prune_to(g.copy(), [(x, y)], frac, ["magnitude-prune:fraction=0.2,neuron_fraction=0.15",
                                                        "eliminate-dead-neurons"])
            results[name] = case(name, g, small, (1, 28, 28), d)
        for name in ("lenet-300-100", "lenet-5"):
            results[f"{name} (NeST synthesized)"] = case(f"{name}-nest", *synthesized(name), (1, 28, 28), d)
        xr, yr = torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,))
        g = nestir.trace(ZOO["resnet-cifar"].factory().eval(), xr[:2])
        small = prune_to(g.copy(), [(xr, yr)], 0.25, ["magnitude-prune:neuron_fraction=0.2", "eliminate-dead-neurons"])
        results["resnet-cifar (channels)"] = case("resnet", g, small, (3, 32, 32), d)
        results["partial_area_lenet5"] = partial_area(d)
        results["onnx_sparse_storage"] = storage(d)
    results["csr_linear_784x300_batch256"] = csr()
    save("latency.json", results)
    lines = ["| model | params × | FLOPs × | dense-equiv. FLOPs × | speed-up b=1 (1t/2t) | "
             "speed-up b=256 (1t/2t) | target |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for k in ("lenet-300-100", "lenet-5", "lenet-300-100 (NeST synthesized)", "lenet-5 (NeST synthesized)",
              "resnet-cifar (channels)"):
        r = results[k]
        lines.append(f"| {k} | {r['params_reduction']:.1f} | {r['flops_reduction']:.1f} | "
                     f"{r['dense_equivalent_flops_reduction']:.1f} | {r['speedup|threads=1|batch=1']:.1f} / "
                     f"{r['speedup|threads=2|batch=1']:.1f} | {r['speedup|threads=1|batch=256']:.1f} / "
                     f"{r['speedup|threads=2|batch=256']:.1f} | {'met' if r['target_met_batch256'] else 'MISSED'} |")
    pa = results["partial_area_lenet5"]
    lines += ["", f"Partial-area LeNet-5 (50% of conv triples masked): conv FLOPs {pa['conv_flops_plain']:,} -> "
              f"{pa['conv_flops_partial_area']:,}; onnxruntime batch 256, 2 threads: partial-area "
              f"{1e3 * pa['ort_latency_s']['partial_area|threads=2|batch=256']:.2f} ms vs plain conv "
              f"{1e3 * pa['ort_latency_s']['plain_conv|threads=2|batch=256']:.2f} ms; torch batch 256: "
              f"{1e3 * pa['torch_latency_s_batch256']['torch_partial_area']:.2f} ms vs "
              f"{1e3 * pa['torch_latency_s_batch256']['torch_plain_conv']:.2f} ms.", "",
              "CSR vs dense 784x300 linear (torch, batch 256): " + ", ".join(
                  f"density {k}: {v['csr_speedup']:.2f}x" for k, v in results["csr_linear_784x300_batch256"].items()),
              "", STORAGE_TITLE, "",
              *storage_table(results["onnx_sparse_storage"])]
    md = "\n".join(lines)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "latency.md"), "w") as f:
        f.write(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
