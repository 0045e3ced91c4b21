#!/usr/bin/env python3
"""Trains the snapshot module's image classifier and exports it as ONNX.

No pretrained image classifier small enough to embed (well under 1 MB) ships in a package on
PyPI or npm under a licence that allows redistribution, so the module's model is trained here,
on data this script makes: 224x224 RGB frames of one filled shape (circle, square, triangle or
cross) of random size, position and colour on a random background, with pixel noise. The
network is a small CNN (three 3x3 convolutions) after an 8x8 average pool, trained with numpy
(Adam, softmax cross-entropy) and exported with the `onnx` package (opset 13).

    python3 train.py            # writes classifier.onnx and labels.txt beside this file

Needs numpy and onnx (`pip install numpy onnx`); onnxruntime, when installed, re-checks the
exported file. Deterministic for a given numpy version (fixed seeds). The held-out accuracy of
the committed model is checked again by weir's test `snapshot_classifier_holds_out` on frames
that test draws itself with the same rules.
"""

import os
import sys

import numpy as np

SIZE = 224
POOL = 8  # the model's first operator: 224 -> 28
LABELS = ["circle", "square", "triangle", "cross"]
# The normalisation Azure's snapshot sample applies (ImageNet mean and standard deviation).
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def draw(rng, label):
    """One RGB24 frame (uint8, HWC) of the shape `label` (the rules the Rust test repeats)."""
    while True:
        bg = rng.integers(0, 256, 3)
        fg = rng.integers(0, 256, 3)
        if np.abs(bg - fg).mean() >= 80:
            break
    r = int(rng.integers(25, 71))  # half extent: shapes 50..140 px across
    cx = int(rng.integers(r + 4, SIZE - r - 4))
    cy = int(rng.integers(r + 4, SIZE - r - 4))
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    dx, dy = x - cx, y - cy
    if label == 0:
        mask = dx * dx + dy * dy <= r * r
    elif label == 1:
        mask = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    elif label == 2:
        # Apex up: the half width grows from 0 at the top to r at the bottom.
        mask = (dy >= -r) & (dy <= r) & (2 * r * np.abs(dx) <= r * (dy + r))
    else:
        t = r // 3
        mask = ((np.abs(dx) <= t) & (np.abs(dy) <= r)) | ((np.abs(dy) <= t) & (np.abs(dx) <= r))
    img = np.where(mask[..., None], fg, bg).astype(np.int32)
    img += rng.integers(-20, 21, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def prepare(frames):
    """Frames (N, 224, 224, 3) uint8 -> the model's input after its average pool: (N, 3, 28, 28)."""
    x = frames.astype(np.float32) / 255.0
    x = (x - MEAN) / STD
    x = x.transpose(0, 3, 1, 2)
    n = x.shape[0]
    s = SIZE // POOL
    return x.reshape(n, 3, s, POOL, s, POOL).mean(axis=(3, 5))


def dataset(seed, n):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(LABELS), n)
    xs = []
    for start in range(0, n, 256):
        frames = np.stack([draw(rng, int(l)) for l in labels[start:start + 256]])
        xs.append(prepare(frames))
    return np.concatenate(xs), labels


def im2col(x):
    b, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([xp[:, :, ky:ky + h, kx:kx + w] for ky in range(3) for kx in range(3)], axis=2)
    return cols.transpose(0, 3, 4, 1, 2).reshape(b * h * w, c * 9)


def conv(x, w, b):
    n, _, h, wd = x.shape
    cols = im2col(x)
    out = cols @ w.reshape(w.shape[0], -1).T + b
    return out.reshape(n, h, wd, -1).transpose(0, 3, 1, 2), cols


def conv_back(dout, cols, w, xshape):
    n, c, h, wd = xshape
    d2 = dout.transpose(0, 2, 3, 1).reshape(-1, w.shape[0])
    dw = (d2.T @ cols).reshape(w.shape)
    db = d2.sum(0)
    dcols = (d2 @ w.reshape(w.shape[0], -1)).reshape(n, h, wd, c, 9).transpose(0, 3, 4, 1, 2)
    dxp = np.zeros((n, c, h + 2, wd + 2), dtype=dout.dtype)
    k = 0
    for ky in range(3):
        for kx in range(3):
            dxp[:, :, ky:ky + h, kx:kx + wd] += dcols[:, :, k]
            k += 1
    return dxp[:, :, 1:-1, 1:-1], dw, db


def pool(x):
    n, c, h, w = x.shape
    r = x.reshape(n, c, h // 2, 2, w // 2, 2)
    out = r.max(axis=(3, 5))
    mask = r == out[:, :, :, None, :, None]
    return out, mask


def pool_back(dout, mask):
    n, c, h, w = dout.shape
    d = mask * dout[:, :, :, None, :, None]
    return d.reshape(n, c, h * 2, w * 2)


def init(rng):
    def he(shape):
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return {
        "w1": he((8, 3, 3, 3)), "b1": np.zeros(8, np.float32),
        "w2": he((16, 8, 3, 3)), "b2": np.zeros(16, np.float32),
        "w3": he((32, 16, 3, 3)), "b3": np.zeros(32, np.float32),
        "wf": he((len(LABELS), 32)), "bf": np.zeros(len(LABELS), np.float32),
    }


def forward(p, x, keep=False):
    c1, k1 = conv(x, p["w1"], p["b1"])
    r1 = np.maximum(c1, 0)
    p1, m1 = pool(r1)
    c2, k2 = conv(p1, p["w2"], p["b2"])
    r2 = np.maximum(c2, 0)
    p2, m2 = pool(r2)
    c3, k3 = conv(p2, p["w3"], p["b3"])
    r3 = np.maximum(c3, 0)
    g = r3.mean(axis=(2, 3))
    logits = g @ p["wf"].T + p["bf"]
    if not keep:
        return logits
    return logits, (x, c1, k1, p1, m1, c2, k2, p2, m2, c3, k3, g)


def backward(p, cache, dlogits):
    x, c1, k1, p1, m1, c2, k2, p2, m2, c3, k3, g = cache
    grads = {"wf": dlogits.T @ g, "bf": dlogits.sum(0)}
    dg = dlogits @ p["wf"]
    dr3 = np.broadcast_to(dg[:, :, None, None], c3.shape) / (c3.shape[2] * c3.shape[3])
    dc3 = dr3 * (c3 > 0)
    dp2, grads["w3"], grads["b3"] = conv_back(dc3, k3, p["w3"], p2.shape)
    dc2 = pool_back(dp2, m2) * (c2 > 0)
    dp1, grads["w2"], grads["b2"] = conv_back(dc2, k2, p["w2"], p1.shape)
    dc1 = pool_back(dp1, m1) * (c1 > 0)
    _, grads["w1"], grads["b1"] = conv_back(dc1, k1, p["w1"], x.shape)
    return grads


def train(x, y, epochs=14, batch=64, lr=0.01, seed=7):
    rng = np.random.default_rng(seed)
    p = init(rng)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(val) for k, val in p.items()}
    step = 0
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        losses = []
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            logits, cache = forward(p, x[idx], keep=True)
            z = logits - logits.max(axis=1, keepdims=True)
            prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
            losses.append(-np.log(prob[np.arange(len(idx)), y[idx]] + 1e-9).mean())
            d = prob
            d[np.arange(len(idx)), y[idx]] -= 1
            grads = backward(p, cache, d / len(idx))
            step += 1
            rate = lr * (0.5 if epoch >= epochs * 2 // 3 else 1.0)
            for k in p:
                m[k] = 0.9 * m[k] + 0.1 * grads[k]
                v[k] = 0.999 * v[k] + 0.001 * grads[k] ** 2
                mh = m[k] / (1 - 0.9 ** step)
                vh = v[k] / (1 - 0.999 ** step)
                p[k] = (p[k] - rate * mh / (np.sqrt(vh) + 1e-8)).astype(np.float32)
        print(f"epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f}", flush=True)
    return p


def export(p, path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(p[k].astype(np.float32), k) for k in sorted(p)]
    nodes = [
        helper.make_node("AveragePool", ["data"], ["a0"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]),
        helper.make_node("Conv", ["a0", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p2", "w3", "b3"], ["c3"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["scores"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "weir-shapes",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, len(LABELS)])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="weir modules/snapshot/model/train.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    x, y = dataset(seed=1, n=6000)
    p = train(x, y)
    hx, hy = dataset(seed=2, n=1000)
    acc = (forward(p, hx).argmax(1) == hy).mean()
    print(f"held-out accuracy (numpy): {acc:.3f}")
    if acc < 0.95:
        sys.exit(f"held-out accuracy {acc:.3f} is under 0.95: not exported")
    path = os.path.join(here, "classifier.onnx")
    export(p, path)
    with open(os.path.join(here, "labels.txt"), "w") as f:
        f.write("".join(label + "\n" for label in LABELS))
    try:
        import onnxruntime
    except ImportError:
        print("onnxruntime not installed: the exported file was not re-checked")
    else:
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        hits = 0
        rng = np.random.default_rng(3)
        for i in range(200):
            label = i % len(LABELS)
            frame = draw(rng, label).astype(np.float32) / 255.0
            data = ((frame - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)
            hits += int(session.run(["scores"], {"data": data})[0].argmax() == label)
        print(f"held-out accuracy (onnxruntime, full 224x224 input): {hits / 200:.3f}")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
