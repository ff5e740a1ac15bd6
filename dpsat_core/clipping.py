"""Exact per-example clipping without per-sample gradient hooks: the "fast" clipping engine.

One backward pass to the layer outputs (forward hooks keep each layer's input and
output; `torch.autograd.grad` returns ∂L/∂output and skips the weight gradients),
then per layer type the cheapest exact per-example squared norms and, once every
example's factor cᵢ = min(1, C/(‖gᵢ‖+1e-6)) is known (Opacus's formula), the clipped
sum Σᵢ cᵢ·gᵢ:

- Linear on (B, D) inputs: ‖∇Wᵢ‖ = ‖aᵢ‖·‖gᵢ‖ (book-keeping), sum (c·G)ᵀA;
- Conv2d (inputs unfolded to A (B, D, L)) and Linear over a sequence: the Gram form
  Σ (AᵢᵀAᵢ)∘(GᵢᵀGᵢ) or the per-example gradient AᵢGᵢᵀ, whichever needs fewer
  multiply-adds for the shapes;
- GroupNorm: its per-example gradients (one number per channel) directly.

Large temporaries live in buffers that grow to the largest chunk seen, and the
clipped sum accumulates in place, so a step allocates no per-example storage.
`FastDPOptimizer` hands the clipped sum to Opacus's noise, scaling, chunk skipping
and release counting.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.optimizers.utils import params as trained_params
from torch import nn

from .errors import ConfigError
from .flat import flat_views

# Opacus adds this to the per-example norm before dividing (DPOptimizer.clip_and_accumulate).
NORM_EPSILON = 1e-6


class _Buffers:
    """Named scratch tensors reused across steps; each grows to the largest shape asked for."""

    def __init__(self) -> None:
        self._flat: dict[str, torch.Tensor] = {}
        self._views: dict[str, tuple[tuple[int, ...], torch.Tensor]] = {}  # the last view: chunks repeat shapes

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor, *, zeroed: bool = False) -> torch.Tensor:
        """A view of `shape`; with `zeroed`, fresh storage starts at zero and callers keep unwritten parts zero."""
        last = self._views.get(name)
        if last is not None and last[0] == shape and last[1].dtype == like.dtype and last[1].device == like.device:
            return last[1]
        numel = math.prod(shape)
        flat = self._flat.get(name)
        if flat is None or flat.numel() < numel or flat.dtype != like.dtype or flat.device != like.device:
            flat = (torch.zeros if zeroed else torch.empty)(numel, dtype=like.dtype, device=like.device)
            self._flat[name] = flat
        view = flat[:numel].view(shape)
        self._views[name] = (tuple(shape), view)
        return view


def _into(out: torch.Tensor, value: torch.Tensor, accumulate: bool) -> None:
    out.add_(value) if accumulate else out.copy_(value)


class _Layer:
    """One module with parameters: the input and output of its last forward, then norms and clipped sums.

    `sums` are the clipped-sum buffers of its parameters (weight, then bias), filled by
    `add_clipped_sums` (overwritten, or added to when accumulating chunks).
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.params: list[nn.Parameter] = [p for p in (module.weight, module.bias) if p is not None]
        self.sums = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in self.params]
        self.buffers = _Buffers()
        self.input: Optional[torch.Tensor] = None
        self.output: Optional[torch.Tensor] = None
        self.versions = (0, 0)
        self.calls = 0

    def record(self, _module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if torch.is_grad_enabled():  # evaluation under no_grad builds no graph and records nothing
            self.input, self.output, self.calls = args[0], output, self.calls + 1
            self.versions = (args[0]._version, output._version)

    def modified(self) -> bool:
        """Whether an in-place operation changed the recorded input or output since the forward pass."""
        return self.versions != (self.input._version, self.output._version)

    def release(self) -> None:
        self.input = self.output = None
        self.calls = 0

    def add_squared_norms(self, grad_output: torch.Tensor, squared: torch.Tensor) -> None:
        """Add each example's squared gradient norm over this layer's parameters into `squared` (B,)."""
        raise NotImplementedError

    def add_clipped_sums(self, factor: torch.Tensor, *, accumulate: bool) -> None:
        """Σᵢ factorᵢ·∇pᵢ into `sums` (after `add_squared_norms` on the same chunk)."""
        raise NotImplementedError


class _Unfolded(_Layer):
    """Conv2d, or Linear over a sequence: y[:, t] = W·a[:, t] (+ b) with A (B, D, T) and G (B, O, T).

    Per example ∇W = G Aᵀ summed over t. Its squared norm comes from the Gram form
    Σ (AᵀA)∘(GᵀG) when T²(D+O) < D·O, else from the per-example gradients themselves,
    kept (B, D, O) for the clipped sum.
    """

    def __init__(self, module: nn.Module):
        super().__init__(module)
        self.a: Optional[torch.Tensor] = None
        self.g: Optional[torch.Tensor] = None
        self.per_example: Optional[torch.Tensor] = None
        self.bias_grads: Optional[torch.Tensor] = None
        self.gram = False

    def _operands(self, grad_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, n = self.input, grad_output.shape[0]
        if isinstance(self.module, nn.Linear):
            a = x.reshape(n, -1, x.shape[-1]).transpose(1, 2)
            return a, grad_output.reshape(n, -1, grad_output.shape[-1]).transpose(1, 2)
        return self._unfold(x), grad_output.reshape(n, grad_output.shape[1], -1)

    def _unfold(self, x: torch.Tensor) -> torch.Tensor:
        """F.unfold as one strided copy from a zero-padded buffer (several times faster than im2col on CPU)."""
        m = self.module
        (ph, pw), (kh, kw), (dh, dw), (sh, sw) = m.padding, m.kernel_size, m.dilation, m.stride
        n, c, h, w = x.shape
        padded = self.buffers.get(f"padded{(c, h, w)}", (n, c, h + 2 * ph, w + 2 * pw), x, zeroed=True)
        padded[:, :, ph : ph + h, pw : pw + w] = x
        out_h, out_w = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        s = padded.stride()
        windows = padded.as_strided(
            (n, c, kh, kw, out_h, out_w), (s[0], s[1], dh * s[2], dw * s[3], sh * s[2], sw * s[3])
        )
        unfolded = self.buffers.get("unfolded", (n, c, kh, kw, out_h, out_w), x)
        unfolded.copy_(windows)
        return unfolded.view(n, c * kh * kw, out_h * out_w)

    def add_squared_norms(self, grad_output: torch.Tensor, squared: torch.Tensor) -> None:
        a, g = self._operands(grad_output)
        n, inputs, steps = a.shape
        outputs = g.shape[1]
        self.a, self.g = a, g
        self.gram = steps * steps * (inputs + outputs) < inputs * outputs
        if self.gram:
            gram_a = torch.bmm(a.transpose(1, 2), a, out=self.buffers.get("gram_a", (n, steps, steps), a))
            gram_g = torch.bmm(g.transpose(1, 2), g, out=self.buffers.get("gram_g", (n, steps, steps), g))
            squared.add_(torch.linalg.vecdot(gram_a.view(n, -1), gram_g.view(n, -1)))
        else:
            per_example = torch.bmm(a, g.transpose(1, 2), out=self.buffers.get("per_example", (n, inputs, outputs), a))
            squared.add_(torch.linalg.vector_norm(per_example.view(n, -1), dim=1).square_())
            self.per_example = per_example
        if self.module.bias is not None:
            self.bias_grads = torch.sum(g, 2, out=self.buffers.get("bias", (n, outputs), g))
            squared.add_(torch.linalg.vector_norm(self.bias_grads, dim=1).square_())

    def add_clipped_sums(self, factor: torch.Tensor, *, accumulate: bool) -> None:
        a, g, n = self.a, self.g, factor.shape[0]
        weight = self.sums[0].view(g.shape[1], a.shape[1])
        if self.gram:
            scaled = torch.mul(g, factor[:, None, None], out=self.buffers.get("scaled", g.shape, g))
            _into(weight, torch.einsum("bot,bdt->od", scaled, a), accumulate)
        else:
            summed = torch.mv(self.per_example.view(n, -1).t(), factor).view(a.shape[1], g.shape[1])
            _into(weight, summed.t(), accumulate)
        if self.module.bias is not None:
            if accumulate:
                self.sums[1].addmv_(self.bias_grads.t(), factor)
            else:
                torch.mv(self.bias_grads.t(), factor, out=self.sums[1])
        self.a = self.g = self.per_example = self.bias_grads = None


class _Linear(_Unfolded):
    """Linear: on (B, D) inputs the per-example gradients gᵢaᵢᵀ are rank one and never built;
    over a sequence it is handled as `_Unfolded`."""

    def __init__(self, module: nn.Module):
        super().__init__(module)
        self.sequence = False

    def add_squared_norms(self, grad_output: torch.Tensor, squared: torch.Tensor) -> None:
        self.sequence = self.input.dim() > 2
        if self.sequence:
            return super().add_squared_norms(grad_output, squared)
        self.g = grad_output
        g_norms = torch.linalg.vector_norm(grad_output, dim=1).square_()
        a_norms = torch.linalg.vector_norm(self.input, dim=1).square_()
        if self.module.bias is not None:
            a_norms.add_(1.0)  # ‖∇W‖² + ‖∇b‖² = ‖g‖²(‖a‖² + 1)
        squared.addcmul_(a_norms, g_norms)

    def add_clipped_sums(self, factor: torch.Tensor, *, accumulate: bool) -> None:
        if self.sequence:
            return super().add_clipped_sums(factor, accumulate=accumulate)
        a, g, n = self.input, self.g, factor.shape[0]
        # (c·G)ᵀA: scale whichever operand is smaller.
        if a.shape[1] <= g.shape[1]:
            left, right = g.t(), torch.mul(a, factor[:, None], out=self.buffers.get("scaled", (n, a.shape[1]), a))
        else:
            left, right = torch.mul(g, factor[:, None], out=self.buffers.get("scaled", (n, g.shape[1]), g)).t(), a
        if accumulate:
            self.sums[0].addmm_(left, right)
        else:
            torch.mm(left, right, out=self.sums[0])
        if self.module.bias is not None:
            if accumulate:
                self.sums[1].addmv_(g.t(), factor)
            else:
                torch.mv(g.t(), factor, out=self.sums[1])
        self.g = None


class _GroupNorm(_Layer):
    """GroupNorm: per example, ∇γ = Σ_spatial x̂·g and ∇β = Σ_spatial g per channel (as Opacus computes them)."""

    def __init__(self, module: nn.Module):
        super().__init__(module)
        self.grads: list[torch.Tensor] = []

    def add_squared_norms(self, grad_output: torch.Tensor, squared: torch.Tensor) -> None:
        m, n, channels = self.module, grad_output.shape[0], grad_output.shape[1]
        normalized = F.group_norm(self.input, m.num_groups, eps=m.eps).view(n * channels, 1, -1)
        g = grad_output.reshape(n * channels, -1)
        grads = [torch.bmm(normalized, g[:, :, None], out=self.buffers.get("weight", (n * channels, 1, 1), g))]
        if m.bias is not None:
            grads.append(torch.sum(g, 1, out=self.buffers.get("bias", (n * channels,), g)))
        self.grads = [grad.view(n, channels) for grad in grads]
        for grad in self.grads:
            squared.add_(torch.linalg.vector_norm(grad, dim=1).square_())

    def add_clipped_sums(self, factor: torch.Tensor, *, accumulate: bool) -> None:
        for out, grad in zip(self.sums, self.grads):
            if accumulate:
                out.addmv_(grad.t(), factor)
            else:
                torch.mv(grad.t(), factor, out=out)
        self.grads = []


def _layer(module: nn.Module) -> _Layer:
    """The engine's handler for a module with parameters; a layer it does not cover is refused with the fix."""
    if type(module) is nn.GroupNorm:
        return _GroupNorm(module)
    if type(module) is nn.Linear:
        return _Linear(module)
    if type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros":
        if not isinstance(module.padding, str):
            return _Unfolded(module)
    raise ConfigError(
        f"fast clipping covers Linear, Conv2d (groups=1, zero padding given as numbers) and GroupNorm layers, "
        f"not {module}: use clipping='hooks'"
    )


class FastClipping:
    """Hooks on `module`'s layers that turn a chunk's mean loss into the clipped sum of its per-example gradients.

    Every parameter in `params` must belong to one of the covered layers (exact
    types), and each layer must run once per forward pass; anything else is
    refused with the fix (clipping='hooks'). The sums are written into `sums`
    (one buffer per parameter, in `params` order): overwritten, or added to when
    accumulating the chunks of one logical batch.
    """

    def __init__(self, module: nn.Module, params: list[nn.Parameter]):
        self.layers: list[_Layer] = []
        buffer: dict[int, torch.Tensor] = {}
        for sub in module.modules():
            if list(sub.parameters(recurse=False)):
                layer = _layer(sub)
                sub.register_forward_hook(layer.record)
                buffer.update({id(p): s for p, s in zip(layer.params, layer.sums)})
                self.layers.append(layer)
        if set(buffer) != {id(p) for p in params}:
            raise ConfigError(
                "fast clipping needs the optimizer to train exactly the model's parameters (none frozen, none "
                "outside it): use clipping='hooks'"
            )
        self.sums = [buffer[id(p)] for p in params]
        self._squared = _Buffers()

    def accumulate(self, loss: torch.Tensor, *, max_grad_norm: float, accumulate: bool) -> None:
        """Σᵢ cᵢ·∇ℓᵢ into `sums` for the chunk whose mean `loss` the hooks recorded."""
        calls = [layer.calls for layer in self.layers]
        try:
            if calls != [1] * len(calls):
                raise RuntimeError(
                    f"the model's layers ran {calls} times since the last backward: fast clipping needs exactly one "
                    "forward pass per backward (evaluate under torch.no_grad())"
                )
            if any(layer.modified() for layer in self.layers):
                raise RuntimeError(
                    "a layer's input or output was modified in place after the layer ran (e.g. ReLU(inplace=True)): "
                    "fast clipping reads them as they were; use out-of-place operations"
                )
            n = self.layers[0].output.shape[0]
            # The loss is a mean over the chunk: seeding with n gives each example's own gradient, as Opacus's
            # hooks do by multiplying their backprops by the batch size.
            seed = torch.full((), float(n), dtype=loss.dtype, device=loss.device)
            grads = torch.autograd.grad(loss, [layer.output for layer in self.layers], grad_outputs=seed)
            with torch.no_grad():
                squared = self._squared.get("squared", (n,), loss).zero_()
                for layer, grad in zip(self.layers, grads):
                    layer.add_squared_norms(grad, squared)
                factor = squared.sqrt_().add_(NORM_EPSILON).reciprocal_().mul_(max_grad_norm).clamp_(max=1.0)
                for layer in self.layers:
                    layer.add_clipped_sums(factor, accumulate=accumulate)
        finally:
            for layer in self.layers:
                layer.release()


class FastDPOptimizer(DPOptimizer):
    """Opacus's DPOptimizer fed by `FastClipping` instead of per-sample gradients.

    `backward(loss)` adds a chunk's clipped sum into the engine's buffers (overwriting
    them on the first chunk of a logical batch) and leaves a one-row view of them in
    `p.grad_sample`, so Opacus's bookkeeping runs as with hooks: `zero_grad`, skipped
    steps for chunks, the "used twice" checks, the empty batch (`private_gradient`
    leaves zero rows), `scale_grad` by the expected batch size and the step hook that
    counts the release. Overridden: `clip_and_accumulate` (the rows are already
    clipped); `add_noise`, which draws the same noise with the same generator calls
    into reused `p.grad` buffers: views of one flat tensor, `released`, which holds the
    last release (zeros before the first) until the next one overwrites it (copy it to
    keep it longer); `scale_grad` (one call for all parameters) and `params` (fixed at
    construction), both only to spend less time per step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, module: nn.Module, **kwargs):
        self._params = trained_params(optimizer)
        super().__init__(optimizer, **kwargs)
        self.engine = FastClipping(module, self._params)
        self.released, self._grads = flat_views(self._params)

    @property
    def params(self) -> list[nn.Parameter]:
        """The trained parameters, fixed at construction (the engine's buffers belong to them)."""
        return self._params

    def backward(self, loss: torch.Tensor) -> None:
        """Clip the chunk whose mean `loss` this is; `pre_step` then takes it (noise after the last chunk)."""
        params = self.params
        if any(getattr(p, "grad_sample", None) is not None for p in params):
            raise RuntimeError("a clipped chunk is already waiting: call pre_step() (and zero_grad()) first")
        accumulate = params[0].summed_grad is not None  # a skipped chunk of this logical batch came before
        self.engine.accumulate(loss, max_grad_norm=self.max_grad_norm, accumulate=accumulate)
        for p, summed in zip(params, self.engine.sums):
            p.grad_sample = summed[None]

    def clip_and_accumulate(self) -> None:
        """The engine's sum is already clipped and accumulated: point `p.summed_grad` at it."""
        for p in self.params:
            _check_processed_flag(p.grad_sample)
            if p.summed_grad is None:
                p.summed_grad = p.grad_sample.sum(0) if p.grad_sample.shape[0] == 0 else p.grad_sample[0]
            _mark_as_processed(p.grad_sample)

    def add_noise(self) -> None:
        """`p.grad` = summed + N(0, σ²C²), one generator call per parameter in Opacus's order and dtype."""
        if self.secure_mode:
            super().add_noise()
            for p, grad in zip(self.params, self._grads):
                p.grad = grad.copy_(p.grad)  # keep the release in `released`
            return
        std = self.noise_multiplier * self.max_grad_norm
        for p, grad in zip(self.params, self._grads):
            _check_processed_flag(p.summed_grad)
            if std == 0:
                grad.zero_()
            else:
                grad.normal_(0, std, generator=self.generator)
            p.grad = grad.add_(p.summed_grad)
            _mark_as_processed(p.summed_grad)

    def scale_grad(self) -> None:
        """Opacus's division by the expected batch size, in one call over all parameters."""
        if self.loss_reduction == "mean":
            torch._foreach_div_([p.grad for p in self.params], self.expected_batch_size * self.accumulated_iterations)
