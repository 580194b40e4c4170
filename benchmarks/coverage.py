"""Coverage of real architectures: torchvision and timm classification models (random weights)
through trace -> verify -> lower (torch, ONNX) -> structured prune -> each growth pass -> lower,
with parity checks at every lowering.

Per model: trace / verify / lower times, opaque ops (what they call), the fraction of parametric
layers whose width can change (their output group is resizable), the fraction that lose neurons
under ``magnitude-prune:fraction=0.3,neuron_fraction=0.25`` + ``eliminate-dead-neurons``, the
parameters before and after, each growth pass's outcome, torch and ONNX parity (max |diff|
relative to the output's max |value|), and onnxruntime latency (batch 1) before and after.

It needs its own environment (never CI): ``python3 -m venv ENV && ENV/bin/pip install
torch==2.14.1 torchvision==0.29.1 timm && ENV/bin/pip install -e .`` (plus onnx, onnxruntime).

Run: ENV/bin/python benchmarks/coverage.py [--models tv:resnet18,timm:dla34] [--timeout 600]
     -> results/coverage.json, results/coverage.md
Each model runs in its own subprocess (a hang or crash costs one row); results are saved after
every model and a second call skips the models already done (``--fresh`` starts over)."""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, machine, save  # noqa: E402

# family-spanning sample; CNNs at 96x96 (their global pooling makes any size work), transformers
# at their fixed 224 (timm ones at a smaller img_size where the constructor takes it)
TORCHVISION = [
    "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "densenet121", "googlenet", "inception_v3",
    "mobilenet_v2", "mobilenet_v3_small", "mnasnet0_5", "shufflenet_v2_x0_5", "squeezenet1_0", "alexnet",
    "vgg11_bn", "efficientnet_b0", "efficientnet_v2_s", "regnet_x_400mf", "regnet_y_400mf", "convnext_tiny",
    "vit_b_16", "swin_t", "maxvit_t",
]
TIMM = [
    "deit_tiny_patch16_224", "dla34", "levit_128s", "dpn68", "repvgg_a2", "rexnet_100", "ghostnet_100",
    "poolformer_s12", "resmlp_12_224", "hrnet_w18_small", "mobilevit_xs", "seresnext26d_32x4d", "resnext50_32x4d",
    "cspresnet50", "mixer_b16_224", "convmixer_768_32", "efficientvit_b0", "tf_efficientnet_lite0",
]
# a second, held-out-style sample (`--models extra`): families and ops the list above lacks
EXTRA = [
    "tv:swin_v2_t", "tv:vit_b_32", "tv:mobilenet_v3_large", "tv:shufflenet_v2_x1_0", "tv:regnet_y_800mf",
    "tv:squeezenet1_1", "tv:mnasnet1_0", "tv:efficientnet_b1",
    "timm:vit_small_patch16_224", "timm:deit3_small_patch16_224", "timm:cait_xxs24_224", "timm:pit_ti_224",
    "timm:xcit_nano_12_p16_224", "timm:eva02_tiny_patch14_224", "timm:efficientformer_l1", "timm:edgenext_xx_small",
    "timm:fastvit_t8", "timm:convnextv2_atto", "timm:repvit_m1", "timm:mobileone_s0", "timm:ghostnetv2_100",
    "timm:hgnet_tiny", "timm:nf_resnet26", "timm:resnest14d", "timm:res2net50_14w_8s", "timm:selecsls42b",
    "timm:skresnet18", "timm:ese_vovnet19b_dw", "timm:lcnet_050", "timm:mobilenetv3_large_100", "timm:mixnet_s",
    "timm:regnetz_b16", "timm:resnetv2_50", "timm:coat_lite_tiny", "timm:visformer_tiny", "timm:efficientvit_m0",
]
# a third probe (`--models probe`, trace -> prune -> lower without the growth passes: the slow part):
# timm models in neither list above, mostly vision transformers and hybrids (results/coverage_probe.*)
PROBE = [
    "timm:convit_tiny", "timm:crossvit_tiny_240", "timm:davit_tiny", "timm:efficientformerv2_s0", "timm:fastvit_sa12",
    "timm:focalnet_tiny_srf", "timm:gcvit_xxtiny", "timm:mobilevitv2_050", "timm:mvitv2_tiny", "timm:nest_tiny",
    "timm:pvt_v2_b0", "timm:swin_tiny_patch4_window7_224", "timm:tiny_vit_5m_224", "timm:twins_pcpvt_small",
]
# a fourth probe (`--models probe2`, no growth passes; results/coverage_probe2.*): 20 more timm models,
# conv families with attention or gating (ECA, NFNet, HaloNet, BoTNet, lambda layers), MLP and
# recurrent token mixers (gMLP, Sequencer), TNT, VOLO, Hiera, BEiT, relative-position ViTs
PROBE2 = [
    "timm:xception41", "timm:inception_v4", "timm:cspdarknet53", "timm:tresnet_m", "timm:halonet26t",
    "timm:botnet26t_256", "timm:coatnet_0_rw_224", "timm:eca_nfnet_l0", "timm:beit_base_patch16_224",
    "timm:gernet_s", "timm:lambda_resnet26t", "timm:inception_next_tiny", "timm:hiera_tiny_224", "timm:resnetrs50",
    "timm:vit_relpos_small_patch16_224", "timm:eca_resnet33ts", "timm:gmlp_s16_224", "timm:volo_d1_224",
    "timm:tnt_s_patch16_224", "timm:sequencer2d_s",
]
SIZE = {"inception_v3": 299, "vit_b_16": 224, "swin_t": 224, "maxvit_t": 224, "googlenet": 96,
        "alexnet": 96, "deit_tiny_patch16_224": 224, "levit_128s": 224, "resmlp_12_224": 224,
        "mixer_b16_224": 224, "mobilevit_xs": 256, "efficientvit_b0": 224, "convmixer_768_32": 96}
THREADS = int(os.environ.get("NESTIR_BENCH_THREADS", "2"))  # torch and onnxruntime threads per model
PRUNE = ["magnitude-prune:fraction=0.3,neuron_fraction=0.25", "eliminate-dead-neurons"]
GROWTH = ["grow-connection:fraction=0.1", "bridge-neuron:count=2", "add-feature-map:count=2,candidates=2",
          "split-neuron:count=2"]


def build(key: str):  # type: ignore[no-untyped-def]
    import torch

    src, name = key.split(":", 1)
    torch.manual_seed(0)
    if src == "tv":
        import torchvision

        kw = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
        model = torchvision.models.get_model(name, weights=None, num_classes=10, **kw)
    else:
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=10)
    size = SIZE.get(name, 96)
    model.eval()
    if name not in SIZE:  # a model that needs its own input size (fixed position embeddings, windows)
        try:
            with torch.no_grad():
                model(torch.rand(1, 3, size, size))
        except Exception:
            cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
            size = int(cfg.get("input_size", (3, 224, 224))[-1]) if isinstance(cfg, dict) else 224
    return model, torch.rand(1, 3, size, size)


def rel(a, b) -> float:  # type: ignore[no-untyped-def]
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def ort_run(path: str, x):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    feed = {name: x.numpy()}
    out = sess.run(None, feed)[0]
    times = []
    for _ in range(5):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


def widths(graph) -> dict:  # type: ignore[no-untyped-def]
    return {n.name: int(n.params["weight"].shape[0]) for n in graph.parametric()}


def module_of(name: str) -> str:
    """The model's layer a parametric node comes from: the frontend names the pieces of a layer it
    cuts ``<layer>__<k>`` (``__<k>__<j>`` when cut twice), and lowering fuses them back."""
    return re.sub(r"(__\d+(_\d+)?)+$", "", name)


def by_module(w: dict) -> dict:
    out: dict = {}
    for k, v in w.items():
        out[module_of(k)] = out.get(module_of(k), 0) + v
    return out


def counts(g, p, row: dict) -> None:  # type: ignore[no-untyped-def]
    """Layers that lose neurons, per IR node and per model layer (pieces of a cut layer summed)."""
    info = g.groups()
    layers = list(g.parametric())
    row["layers"] = len(layers)
    row["layers_resizable"] = sum((grp := info.produced(n.name)) is not None and grp.prunable for n in layers)
    before, after = widths(g), widths(p)
    row["layers_lost_neurons"] = sum(after.get(k, 0) < v for k, v in before.items())
    mb, ma = by_module(before), by_module(after)
    row["modules"] = len(mb)
    row["modules_lost_neurons"] = sum(ma.get(k, 0) < v for k, v in mb.items())


def lower_and_check(graph, x, ref, row: dict, tag: str, tmp: str) -> None:  # type: ignore[no-untyped-def]
    import torch

    t = time.perf_counter()
    mod = graph.to_torch()
    row[f"{tag}_to_torch_s"] = round(time.perf_counter() - t, 3)
    with torch.no_grad():
        out = mod(x)
    row[f"{tag}_torch_rel_diff"] = rel(out, ref)
    path = os.path.join(tmp, f"{tag}.onnx")
    t = time.perf_counter()
    graph.to_onnx(path)
    row[f"{tag}_to_onnx_s"] = round(time.perf_counter() - t, 3)
    o, lat = ort_run(path, x)
    row[f"{tag}_onnx_rel_diff"] = rel(torch.from_numpy(o), ref)
    row[f"{tag}_ort_ms"] = round(1000 * lat, 2)


def one(key: str, growth: bool = True) -> dict:
    import torch

    import nestir
    from nestir.ir.interpreter import IRModule

    torch.set_num_threads(THREADS)
    row: dict = {"model": key}
    here = os.path.dirname(os.path.abspath(__file__))
    rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=here, capture_output=True, text=True)
    row["commit"] = rev.stdout.strip()  # nestir's version this row measured
    model, x = build(key)
    with torch.no_grad():
        ref = model(x)
    row["params_model"] = sum(p.numel() for p in model.parameters())
    t = time.perf_counter()
    g = nestir.trace(model, x)  # verifies
    row["trace_verify_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    g.verify()
    row["verify_s"] = round(time.perf_counter() - t, 3)
    ops = nestir.opaque_nodes(g)
    row["opaque"] = len(ops)
    row["opaque_calls"] = sorted({o.split(" = ", 1)[1].split(" (")[0] for o in ops})
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        lower_and_check(g, x, ref, row, "traced", tmp)
        row["trace_verify_lower_torch_s"] = round(row["trace_verify_s"] + row["traced_to_torch_s"], 3)
        row["params"] = nestir.stats(g, compact=False)["params"]
        y = torch.randint(0, 10, (2,))
        data = [(torch.rand(2, *x.shape[1:]), y)]
        t = time.perf_counter()
        p = nestir.apply(g, PRUNE, data=data)
        row["prune_s"] = round(time.perf_counter() - t, 3)
        counts(g, p, row)
        row["params_pruned"] = nestir.stats(p, compact=False)["params"]
        with torch.no_grad():
            pref = IRModule(p.copy()).eval()(x)
        lower_and_check(p, x, pref, row, "pruned", tmp)
        row["growth"] = {}
        for spec in GROWTH if growth else []:
            name = spec.split(":")[0]
            try:
                t = time.perf_counter()
                q = nestir.apply(p, [spec], data=data)
                s = {"seconds": round(time.perf_counter() - t, 3),
                     "params": nestir.stats(q, compact=False)["params"]}
                with torch.no_grad():
                    qref = IRModule(q.copy()).eval()(x)
                r: dict = {}
                lower_and_check(q, x, qref, r, "grown", tmp)
                s.update({"torch_rel_diff": r["grown_torch_rel_diff"], "onnx_rel_diff": r["grown_onnx_rel_diff"]})
                s["ok"] = s["torch_rel_diff"] <= 1e-5 and s["onnx_rel_diff"] <= 1e-4
            except Exception as e:  # one failing pass is a finding, not the end of the row
                s = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            row["growth"][name] = s
    row["parity_ok"] = (row["traced_torch_rel_diff"] <= 1e-5 and row["traced_onnx_rel_diff"] <= 1e-4
                        and row["pruned_torch_rel_diff"] <= 1e-5 and row["pruned_onnx_rel_diff"] <= 1e-4)
    row["ok"] = row["parity_ok"] and all(s["ok"] for s in row["growth"].values())
    return row


def recount(key: str) -> dict:
    """Only the layer counts of ``one``: trace, the same prune, widths before and after."""
    import torch

    import nestir

    model, x = build(key)
    g = nestir.trace(model, x)
    y = torch.randint(0, 10, (2,))
    p = nestir.apply(g, PRUNE, data=[(torch.rand(2, *x.shape[1:]), y)])
    row: dict = {"model": key}
    counts(g, p, row)
    return row


def child(key: str, growth: bool, mode: str = "") -> None:
    try:
        row = recount(key) if mode == "count" else one(key, growth)
    except Exception as e:
        row = {"model": key, "ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:400]}",
               "where": traceback.format_exc().splitlines()[-3:]}
    print("@@ROW " + json.dumps(row))


def markdown(rows: list[dict]) -> str:
    lines = [f"Random weights, batch 1, {THREADS} CPU thread(s). 'resizable': parametric layers whose width can change "
             "(by neurons, or by whole groups of a grouped conv); "
             "'lose neurons': layers narrower after `magnitude-prune:fraction=0.3,neuron_fraction=0.25` + "
             "`eliminate-dead-neurons`; 'model layers': the same counted per layer of the model (the pieces "
             "of a layer the frontend cut at a channel range are summed; lowering fuses them back); growth: passes "
             "that ran and kept parity (torch 1e-5, ONNX 1e-4 relative).",
             "", "| model | trace+verify+lower s | opaque | resizable | lose neurons | model layers losing | "
             "params → pruned | growth ok | ORT ms before → after | status |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | - | - | - | - | - | - | - | - | fails: {r['error'][:120]} |")
            continue
        g = r["growth"]
        bad = [f"{k}: {v.get('error', 'parity')[:80]}" for k, v in g.items() if not v["ok"]]
        status = "ok" if r["ok"] else "; ".join(bad + ([] if r["parity_ok"] else ["prune/lower parity"]))
        status += "" if g else " (growth not run)"
        grown = f"{sum(v['ok'] for v in g.values())}/{len(g)}" if g else "-"
        lines.append(f"| {r['model']} | {r['trace_verify_lower_torch_s']:.2f} | {r['opaque']} | "
                     f"{r['layers_resizable']}/{r['layers']} | {r['layers_lost_neurons']}/{r['layers']} | "
                     f"{r.get('modules_lost_neurons', '-')}/{r.get('modules', '-')} | "
                     f"{r['params']:,} → {r['params_pruned']:,} | "
                     f"{grown} | "
                     f"{r['traced_ort_ms']} → {r['pruned_ort_ms']} | {status} |")
    ok = sum(r.get("ok", False) for r in rows)
    lines += ["", f"{ok} of {len(rows)} models pass every step."]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3] == "growth", sys.argv[3])
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join([f"tv:{m}" for m in TORCHVISION] + [f"timm:{m}" for m in TIMM]),
                    help="comma-separated models, \"extra\" for the second sample (results/coverage_extra.*), "
                         "\"probe\" / \"probe2\" for the third / fourth (no growth passes; "
                         "results/coverage_probe*.*)")
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--redo", default="", help="comma-separated models to run again, their rows replaced in place")
    ap.add_argument("--recount", action="store_true",
                    help="only recompute each stored row's layer counts (trace + the same prune), in place")
    ap.add_argument("--no-growth", action="store_true",
                    help="skip the growth passes (the slow part): results/coverage_nogrowth.json/.md")
    args = ap.parse_args()
    extra, probe = args.models == "extra", args.models in ("probe", "probe2")
    stem = "coverage_" + args.models if probe else None
    if extra:
        args.models = ",".join(EXTRA)
    if probe:
        args.models, args.no_growth = ",".join(PROBE if args.models == "probe" else PROBE2), True
    stem = stem or \
        ("coverage_nogrowth" if args.no_growth else "coverage") + ("_extra" if extra else "")
    path = os.path.join(RESULTS, stem + ".json")
    res = {"rows": []}
    if os.path.isfile(path) and not args.fresh:
        with open(path) as f:
            res = json.load(f)
    if args.recount:
        for r in res["rows"]:
            if "error" in r:
                continue
            p = subprocess.run([sys.executable, __file__, "--child", r["model"], "count"], capture_output=True,
                               text=True, timeout=args.timeout)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("@@ROW ")]
            new = json.loads(line[-1][6:]) if line else {"error": p.stderr[-300:]}
            if "error" in new:
                print(f"{r['model']}: recount failed: {new['error'][:200]}", flush=True)
                continue
            r.update(new)
            print(f"{r['model']}: {new['layers_lost_neurons']}/{new['layers']} layers, "
                  f"{new['modules_lost_neurons']}/{new['modules']} model layers", flush=True)
            save(path, res)
            with open(os.path.join(RESULTS, stem + ".md"), "w") as f:
                f.write(markdown(res["rows"]) + "\n")
        return None
    redo = set(filter(None, args.redo.split(",")))
    done = {r["model"] for r in res["rows"]} - redo
    for key in [*args.models.split(","), *sorted(redo - set(args.models.split(",")))]:
        if key in done:
            continue
        t = time.perf_counter()
        try:
            mode = "nogrowth" if args.no_growth else "growth"
            p = subprocess.run([sys.executable, __file__, "--child", key, mode], capture_output=True, text=True,
                               timeout=args.timeout)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("@@ROW ")]
            row = (json.loads(line[-1][6:]) if line else
                   {"model": key, "ok": False, "error": f"crashed (exit {p.returncode}): {p.stderr[-300:]}"})
        except subprocess.TimeoutExpired:
            row = {"model": key, "ok": False, "error": f"timed out after {args.timeout} s"}
        row["wall_s"] = round(time.perf_counter() - t, 1)
        at = [i for i, r in enumerate(res["rows"]) if r["model"] == key]
        if at:
            res["rows"][at[0]] = row
        else:
            res["rows"].append(row)
        print(f"{key}: {'ok' if row.get('ok') else row.get('error', 'fails a step')} ({row['wall_s']} s)", flush=True)
        res["machine"] = machine()
        import torch

        res["torch"] = torch.__version__
        save(path, res)
        with open(os.path.join(RESULTS, stem + ".md"), "w") as f:
            f.write(markdown(res["rows"]) + "\n")


if __name__ == "__main__":
    main()
