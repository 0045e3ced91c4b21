#!/usr/bin/env python3
"""Writes slow.onnx: 24 chained 1536x1536 matrix products of the input with itself, summed to
one value. A few hundred bytes of model, seconds of CPU on any backend (nothing is constant, so
no backend can fold it away at load). Needs `pip install onnx`."""

import os

import onnx
from onnx import TensorProto, helper

N = 1536
STEPS = 24

nodes = []
previous = "x"
for step in range(STEPS):
    out = f"p{step}"
    nodes.append(helper.make_node("MatMul", [previous, "x"], [out]))
    previous = out
nodes.append(helper.make_node("ReduceSum", [previous], ["total"], keepdims=0))
graph = helper.make_graph(
    nodes,
    "weir-slow",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, N])],
    [helper.make_tensor_value_info("total", TensorProto.FLOAT, [])],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                          producer_name="weir modules/hostile/nn-abuse/make_slow_model.py")
model.ir_version = 8
onnx.checker.check_model(model)
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slow.onnx")
onnx.save(model, path)
print(f"wrote {path} ({os.path.getsize(path)} bytes)")
