"""A one-hidden-layer perceptron (or, with no hidden units, softmax regression) in NumPy.

Forward pass for a minibatch X (n x d), labels y, K classes:

    z1 = X W1 + b1                 h = relu(z1) = max(z1, 0)        (skipped when hidden == 0: h = X)
    z2 = h W2 + b2                 p = softmax(z2),  p_ik = exp(z2_ik - max_k z2_ik) / sum_k exp(...)
    L  = -1/n sum_i log p_{i,y_i}  +  lambda/2 (|W1|^2 + |W2|^2)      (cross-entropy + L2 on the weights)

Backward pass (the gradients of L):

    dz2 = (p - onehot(y)) / n      dW2 = h^T dz2 + lambda W2          db2 = sum_i dz2_i
    dh  = dz2 W2^T                 dz1 = dh * [z1 > 0]
    dW1 = X^T dz1 + lambda W1      db1 = sum_i dz1_i

Weights start with He initialisation, W ~ N(0, 2 / fan_in) (keeps ReLU activations' variance steady), biases 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Params = dict[str, np.ndarray]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax; subtracting the row maximum first keeps exp() from overflowing."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood -1/n sum_i log p_{i,y_i} (probabilities floored at 1e-12 to stay finite)."""
    picked = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(picked, 1e-12))))


def init_params(n_in: int, hidden: int, n_out: int, rng: np.random.Generator) -> Params:
    """He-initialised weights, zero biases; ``hidden == 0`` gives softmax regression (W2, b2 only)."""
    params: Params = {}
    fan_in = n_in
    if hidden > 0:
        params["W1"] = rng.standard_normal((n_in, hidden)) * np.sqrt(2.0 / n_in)
        params["b1"] = np.zeros(hidden)
        fan_in = hidden
    params["W2"] = rng.standard_normal((fan_in, n_out)) * np.sqrt(2.0 / fan_in)
    params["b2"] = np.zeros(n_out)
    return params


def forward(params: Params, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Class probabilities p (n x K) and what the backward pass needs (z1 and h when there is a hidden layer)."""
    cache: dict[str, np.ndarray] = {"x": x}
    h = x
    if "W1" in params:
        z1 = x @ params["W1"] + params["b1"]
        h = np.maximum(z1, 0.0)
        cache["z1"] = z1
    cache["h"] = h
    return softmax(h @ params["W2"] + params["b2"]), cache


def loss_and_grads(
    params: Params, x: np.ndarray, labels: np.ndarray, weight_decay: float = 0.0
) -> tuple[float, Params]:
    """The loss L above (cross-entropy + L2) and its gradient with respect to every parameter."""
    probs, cache = forward(params, x)
    n = len(labels)
    loss = cross_entropy(probs, labels)
    dz2 = probs.copy()
    dz2[np.arange(n), labels] -= 1.0
    dz2 /= n
    h = cache["h"]
    grads: Params = {"W2": h.T @ dz2, "b2": dz2.sum(axis=0)}
    if "W1" in params:
        dh = dz2 @ params["W2"].T
        dz1 = dh * (cache["z1"] > 0)
        grads["W1"] = x.T @ dz1
        grads["b1"] = dz1.sum(axis=0)
    if weight_decay:
        for name in ("W1", "W2"):
            if name in params:
                loss += 0.5 * weight_decay * float(np.sum(params[name] ** 2))
                grads[name] += weight_decay * params[name]
    return loss, grads


def predict_proba(params: Params, x: np.ndarray) -> np.ndarray:
    """Class probabilities for the rows of ``x`` (already scaled to [0, 1])."""
    return forward(params, x)[0]


def parameter_count(params: Params) -> int:
    return int(sum(p.size for p in params.values()))


@dataclass(slots=True)
class MomentumSGD:
    """SGD with (heavy-ball) momentum: v <- mu v - eta g;  theta <- theta + v.  (mu = 0 is plain SGD.)"""

    learning_rate: float
    momentum: float = 0.9
    velocity: Params = field(default_factory=dict)

    def step(self, params: Params, grads: Params) -> None:
        for name, grad in grads.items():
            v = self.velocity.get(name)
            if v is None:
                v = self.velocity[name] = np.zeros_like(grad)
            v *= self.momentum
            v -= self.learning_rate * grad
            params[name] += v
