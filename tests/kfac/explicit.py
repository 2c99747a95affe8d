"""Brute-force references built without kfac's code: explicit per-example quantities, explicit
Kronecker products and explicit inverses, for tiny float64 networks of nn.Linear layers (and,
for KFC, explicit patches of nn.Conv2d layers)."""

from __future__ import annotations

import torch
from torch import nn

from kfac.losses import negative_log_likelihood

WHOLE_BATCH_MODEL = {"quadratic_fraction": 1.0, "adapt_quadratic_rows": False}
"""KFAC options for a quadratic model (§7) on the whole mini-batch, the batch the references'
exact Fisher is of."""


def tiny_net(bias=True, seed=0, widths=(4, 5, 3, 3)) -> nn.Sequential:
    """A float64 MLP of Linear layers of these widths with tanh between them."""
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=False)):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers).double()


def batch(family, n=64, d_in=4, d_out=3, seed=1) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and data targets of the loss family (the empirical Fisher's, never sampled)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=gen, dtype=torch.float64)
    if family == "cross_entropy":
        y = torch.randint(0, d_out, (n,), generator=gen)
    elif family == "bce":
        y = torch.bernoulli(torch.full((n, d_out), 0.5, dtype=torch.float64), generator=gen)
    else:
        y = torch.randn(n, d_out, generator=gen, dtype=torch.float64)
    return x, y


def linear_layers(model: nn.Sequential) -> list[nn.Linear]:
    return [m for m in model if isinstance(m, nn.Linear)]


def per_example_activations(model: nn.Sequential, inputs, targets, family):
    """Per-example ā (with homogeneous 1) and g = ∂(−log p)/∂s of every Linear, by a manual
    forward pass through the Sequential."""
    a_rows, outputs = [], []
    x = inputs
    for module in model:
        if isinstance(module, nn.Linear):
            a = x.detach()
            if module.bias is not None:
                a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], 1)
            a_rows.append(a)
            x = module(x)
            outputs.append(x)
        else:
            x = module(x)
    loss = negative_log_likelihood(x, targets, family).sum()
    g_rows = list(torch.autograd.grad(loss, outputs))
    return a_rows, g_rows


def vec_matrix(layer: nn.Linear, weight_part, bias_part) -> torch.Tensor:
    """Column-major vec of [W b] (so that vec(g āᵀ) = ā ⊗ g)."""
    matrix = weight_part if bias_part is None else torch.cat([weight_part, bias_part[:, None]], 1)
    return matrix.T.reshape(-1)


def parameter_vector(model) -> torch.Tensor:
    return torch.cat([vec_matrix(m, m.weight, m.bias) for m in linear_layers(model)])


def gradient_vector(model, inputs, targets, family, weight_decay=0.0) -> torch.Tensor:
    """∇h = ∇(mean NLL) + ηθ, in the column-major [W b] ordering."""
    model.zero_grad()
    negative_log_likelihood(model(inputs), targets, family).mean().backward()
    grads = [
        vec_matrix(m, m.weight.grad, m.bias.grad if m.bias is not None else None)
        for m in linear_layers(model)
    ]
    return torch.cat(grads).detach() + weight_decay * parameter_vector(model).detach()


def factors(a_rows, g_rows):
    """Ā(i, j) and G(i, j) for all pairs of layers, as dicts keyed by (i, j)."""
    n = a_rows[0].shape[0]
    count = len(a_rows)
    big_a = {(i, j): a_rows[i].T @ a_rows[j] / n for i in range(count) for j in range(count)}
    big_g = {(i, j): g_rows[i].T @ g_rows[j] / n for i in range(count) for j in range(count)}
    return big_a, big_g


def damped(a, g, gamma):
    """(Ā + πγI, G + γ/πI) with π = sqrt((tr Ā/d_a) / (tr G/d_g))."""
    if gamma == 0:
        return a, g
    pi = torch.sqrt((torch.trace(a) / a.shape[0]) / (torch.trace(g) / g.shape[0]))
    return a + pi * gamma * torch.eye(a.shape[0], dtype=a.dtype), g + gamma / pi * torch.eye(
        g.shape[0], dtype=g.dtype
    )


def block_diagonal_inverse(big_a, big_g, gamma) -> torch.Tensor:
    blocks = []
    for i in range(len({k[0] for k in big_a})):
        a, g = damped(big_a[i, i], big_g[i, i], gamma)
        blocks.append(torch.linalg.inv(torch.kron(a, g)))
    return torch.block_diag(*blocks)


def block_tridiagonal_inverse(big_a, big_g, gamma) -> torch.Tensor:
    """F̂⁻¹ = Ξᵀ Λ Ξ built from explicit Kronecker products and explicit inverses (§4.3)."""
    count = len({k[0] for k in big_a})
    diag = [torch.kron(*damped(big_a[i, i], big_g[i, i], gamma)) for i in range(count)]
    sizes = [d.shape[0] for d in diag]
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    total = offsets[-1]
    xi = torch.eye(total, dtype=diag[0].dtype)
    lam = torch.zeros(total, total, dtype=diag[0].dtype)
    for i in range(count):
        rows = slice(offsets[i], offsets[i + 1])
        if i < count - 1:
            off = torch.kron(big_a[i, i + 1], big_g[i, i + 1])
            psi = off @ torch.linalg.inv(diag[i + 1])
            sigma = diag[i] - psi @ diag[i + 1] @ psi.T
            xi[rows, offsets[i + 1] : offsets[i + 2]] = -psi
        else:
            sigma = diag[i]
        lam[rows, rows] = torch.linalg.inv(sigma)
    return xi.T @ lam @ xi


def output_fisher(outputs, family) -> torch.Tensor:
    """F_R per example, (N, k, k)."""
    n, k = outputs.shape
    if family == "cross_entropy":
        p = torch.softmax(outputs, 1)
        return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    if family == "bce":
        p = torch.sigmoid(outputs)
        return torch.diag_embed(p * (1 - p))
    return torch.eye(k, dtype=outputs.dtype).expand(n, k, k)


def linear_parameters(model: nn.Module, vector: torch.Tensor) -> dict[str, torch.Tensor]:
    """The Linear layers' weights and biases by parameter name, from the column-major [W b]
    vector of `parameter_vector` (the inverse of its ordering)."""
    params, start = {}, 0
    for name, module in model.named_children():
        if not isinstance(module, nn.Linear):
            continue
        columns = module.in_features + (module.bias is not None)
        size = module.out_features * columns
        matrix = vector[start : start + size].reshape(columns, module.out_features).T
        start += size
        params[f"{name}.weight"] = matrix[:, : module.in_features]
        if module.bias is not None:
            params[f"{name}.bias"] = matrix[:, -1]
    return params


def exact_fisher(model, inputs, family) -> torch.Tensor:
    """F = E[Jᵀ F_R J] over all parameters in the column-major [W b] ordering, by full
    per-example Jacobians (the exact Gauss–Newton matrix of the mini-batch)."""
    layers = linear_layers(model)
    theta = parameter_vector(model).detach()

    def unflatten(vector):
        return linear_parameters(model, vector)

    def forward(vector):
        return torch.func.functional_call(model, unflatten(vector), (inputs,))

    assert len(layers) > 0
    outputs = forward(theta).detach()
    jacobian = torch.autograd.functional.jacobian(forward, theta)  # (N, k, P)
    fr = output_fisher(outputs, family)
    return torch.einsum("nkp,nkl,nlq->pq", jacobian, fr, jacobian) / inputs.shape[0]


def explicit_patches(x, conv):
    """⟦ā⟧_t for every example and output location by slicing, (B, |T|, in·kh·kw [+1])."""
    kh, kw = conv.kernel_size
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    padded = nn.functional.pad(x, (pw, pw, ph, ph))
    out_h = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    out_w = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for i in range(out_h):
        for j in range(out_w):
            window = padded[
                :,
                :,
                i * sh : i * sh + dh * (kh - 1) + 1 : dh,
                j * sw : j * sw + dw * (kw - 1) + 1 : dw,
            ]
            rows.append(window.reshape(x.shape[0], -1))
    patches = torch.stack(rows, 1)
    if conv.bias is not None:
        patches = torch.cat([patches, torch.ones(*patches.shape[:2], 1, dtype=x.dtype)], 2)
    return patches


def conv_and_its_linear_twin() -> tuple[nn.Sequential, nn.Sequential]:
    """A conv net whose 3×3 kernel covers its whole 3×3 input (one output location, |T| = 1)
    and the Linear net that computes the same function with the same parameters: KFC on the
    first must equal K-FAC on the second."""
    torch.manual_seed(2)
    conv_net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Tanh(), nn.Linear(4, 3))
    linear_net = nn.Sequential(nn.Flatten(), nn.Linear(18, 4), nn.Tanh(), nn.Linear(4, 3))
    with torch.no_grad():
        linear_net[1].weight.copy_(conv_net[0].weight.reshape(4, 18))
        linear_net[1].bias.copy_(conv_net[0].bias)
        linear_net[3].load_state_dict(conv_net[3].state_dict())
    return conv_net, linear_net
