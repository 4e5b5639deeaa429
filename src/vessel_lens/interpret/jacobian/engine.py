"""Exact Jacobians of a segmentation model's per-pixel output with respect to its input.

Row n of the Jacobian is the gradient of the output at pixel ``pixels[n]`` (the probability,
logit or margin of ``target_class``) with respect to every input pixel: ``J`` is (N, C, H, W).
Models with one output channel are sigmoid heads (:mod:`vessel_lens.models.heads`).
Three strategies compute the same numbers:

``linear``  one recorded forward pass, then a hand-written batched backward that only touches
            the rectangle where each chunk's cotangents can be non-zero (fast; models built from
            convolutions, BatchNorm, element-wise activations, additions, pads, crops, pooling).
``vmap``    ``torch.func.vjp`` + ``vmap`` over chunks of one-hot cotangents on a
            BatchNorm-folded copy (any differentiable model).
``loop``    one ``torch.autograd.grad`` per output pixel: the original method, the reference.

``auto`` uses ``linear`` when the model's operations all have rules, else ``vmap``, else
``loop`` (models whose custom ``autograd.Function`` s torch.func cannot transform);
:attr:`JacobianEngine.fallback` says why.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.interpret._graph.tape import record
from vessel_lens.interpret.jacobian._linear.allocator import keep_freed_memory
from vessel_lens.interpret.jacobian.strategies import REGISTRY, Unavailable
from vessel_lens.interpret.pixels import check_image, flat_pixels, output_seeds
from vessel_lens.models.heads import OUTPUTS, class_channel, class_probability
from vessel_lens.models.inference import frozen_eval, model_device

STRATEGIES = ("auto", *REGISTRY)
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_MEMORY_BUDGET = 1 << 30


def _on(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    tensors = (*model.parameters(), *model.buffers())
    floating = [t for t in tensors if t.is_floating_point()]
    if all(t.device == device for t in tensors) and all(t.dtype == dtype for t in floating):
        return model
    return copy.deepcopy(model).to(device=device, dtype=dtype)


class JacobianEngine:
    """One model and image prepared for computing Jacobian rows in chunks.

    The forward pass happens here, once; :meth:`rows` then computes any pixels' rows. The
    caller's model is left as found. ``strategy`` is the strategy actually used; ``logits``
    the model's (1, K, H, W) output and ``probability`` (H, W) the probability of
    ``target_class`` (the softmax, or the sigmoid of a one-channel model's logit), whatever
    ``output`` is differentiated.
    """

    def __init__(
        self,
        model: nn.Module,
        image: torch.Tensor,
        *,
        target_class: int = 1,
        output: str = "probability",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        layer: str | None = None,
        strategy: str = "auto",
    ):
        if output not in OUTPUTS:
            raise ConfigError(f"output {output!r}: choose one of {', '.join(OUTPUTS)}")
        if strategy not in STRATEGIES:
            raise ConfigError(f"strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
        if dtype not in DTYPES:
            raise ConfigError(f"dtype {dtype}: choose float32, float64, bfloat16 or float16")
        check_image(image)
        if not image.is_floating_point():
            raise ConfigError(f"image must be floating point, not {image.dtype}")
        low_precision = dtype in (torch.bfloat16, torch.float16)
        if low_precision and strategy != "auto" and not REGISTRY[strategy].low_precision:
            able = " or ".join(name for name, spec in REGISTRY.items() if spec.low_precision)
            raise ConfigError(f"dtype {dtype} is only supported by the {able} strategy")
        self.device = (
            torch.device(device) if device is not None else model_device(model, image.device)
        )
        if self.device.type == "cpu":
            keep_freed_memory()
        self.output, self.dtype, self.layer = output, dtype, layer
        self.fallback = ""
        """Why ``auto`` did not use a faster strategy (empty when it did not fall back)."""
        forward_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        image = (image[None] if image.dim() == 2 else image).to(self.device, forward_dtype)
        with frozen_eval(model):
            work = _on(model, self.device, forward_dtype)
            with frozen_eval(work):
                module = self._layer_module(work)
                source = self._source(work, image, module)
                self.logits = self._forward(work, image, module)
                self._check_target(target_class)
                self.target_class = target_class
                self.strategy_impl = self._build(work, image, module, source, strategy)
        self.source_shape = tuple(source.shape[1:])
        self.strategy = self.strategy_impl.name
        self.height, self.width = (int(s) for s in self.logits.shape[-2:])
        self.probability = class_probability(self.logits, target_class)[0].float()

    def _layer_module(self, model: nn.Module) -> nn.Module | None:
        if self.layer is None:
            return None
        try:
            return model.get_submodule(self.layer)
        except AttributeError:
            raise ConfigError(
                f"layer {self.layer!r}: the model has no such submodule (see model.named_modules())"
            ) from None

    def _source(self, model: nn.Module, image: torch.Tensor, module: nn.Module | None):
        if module is None:
            return image[None]
        captured: list[object] = []
        handle = module.register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            with torch.no_grad():
                model(image[None])
        finally:
            handle.remove()
        if len(captured) != 1:
            raise ConfigError(
                f"layer {self.layer!r} runs {len(captured)} times per forward pass; "
                "its feature map is ambiguous"
            )
        features = captured[0]
        if not isinstance(features, torch.Tensor) or features.dim() != 4:
            raise ConfigError(f"layer {self.layer!r} does not output a (B, C, H, W) tensor")
        return features.detach()

    def _forward(self, model: nn.Module, image: torch.Tensor, module: nn.Module | None):
        self.tape = record(model, image, module)
        logits = self.tape.result
        sizes = [t.numel() for t in _tensors(self.tape)] or [0]
        self.largest_elements, self.total_elements = max(sizes), sum(sizes)
        """Elements of the largest recorded tensor, and of all of them."""
        height, width = image.shape[-2:]
        if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
            shape = (
                tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            )
            raise ConfigError(f"model output must be (B, K, H, W) logits, not {shape}")
        if logits.shape[0] != 1 or tuple(logits.shape[-2:]) != (height, width):
            raise ConfigError(
                f"model output {tuple(logits.shape)} does not match the input "
                f"(1, K, {height}, {width})"
            )
        return logits.detach()

    def _check_target(self, target: int) -> None:
        class_channel(int(self.logits.shape[1]), target)

    def _build(self, model, image, module, source, strategy):
        """The asked strategy, or for ``auto`` the first registered one that can handle the
        model; the reasons of those that could not go to :attr:`fallback`."""
        reasons = []
        names = list(REGISTRY) if strategy == "auto" else [strategy]
        for index, name in enumerate(names):
            spec = REGISTRY[name]
            if not spec.uses_tape:
                self.tape = None
            try:
                return spec.build(self, model, image[None], module, source)
            except Unavailable as exc:
                if name == strategy:
                    raise ConfigError(
                        f"strategy {name!r} cannot handle this model: {exc}"
                    ) from None
                later = [REGISTRY[n] for n in names[index + 1 :]]
                if self.dtype in (torch.bfloat16, torch.float16) and not any(
                    s.low_precision for s in later
                ):
                    raise ConfigError(
                        f"dtype {self.dtype} needs the {name} strategy: {exc}"
                    ) from None
                reasons.append(f"{name}: {exc}")
            finally:
                self.fallback = "; ".join(reasons)
        raise AssertionError("the last registered strategy handles every model")

    def rows(self, flat: torch.Tensor) -> torch.Tensor:
        """Jacobian rows for flat output pixel indices: (N, *source shape) in ``dtype``."""
        seeds = output_seeds(self.logits, flat, self.target_class, self.output)
        rows = self.strategy_impl.rows(flat.to(self.device), seeds.to(self.device, self.dtype))
        return rows.to(self.dtype)

    def pass_bytes(self, rows: int) -> int:
        """Estimated memory a batched backward pass over ``rows`` rows takes (the estimate
        :meth:`default_chunk` sizes chunks by)."""
        per_row = REGISTRY[self.strategy].row_elements(self)
        return rows * per_row * (torch.finfo(self.dtype).bits // 8)

    def default_chunk(self) -> int:
        """Rows per chunk: as many as fit the memory budget, up to a per-strategy cap,
        rounded to whole image rows when a chunk spans more than one."""
        per_row = self.pass_bytes(1)
        budget = _MEMORY_BUDGET
        if self.device.type == "cuda":
            budget = max(budget, torch.cuda.mem_get_info(self.device)[0] // 4)
        spec = REGISTRY[self.strategy]
        cap = spec.max_chunk_cuda if self.device.type == "cuda" else spec.max_chunk
        chunk = max(1, min(cap, budget // max(per_row, 1)))
        if chunk >= self.width:
            chunk -= chunk % self.width
        return chunk

    def chunks(self, flat: torch.Tensor, chunk_size: int | None = None):
        """Yield (flat pixel indices, rows) for consecutive chunks of ``flat``."""
        size = chunk_size or self.default_chunk()
        for start in range(0, len(flat), size):
            part = flat[start : start + size]
            yield part, self.rows(part)


def _tensors(tape) -> Iterator[torch.Tensor]:
    for entry in tape.entries:
        values = entry.value if isinstance(entry.value, (tuple, list)) else (entry.value,)
        for value in values:
            if isinstance(value, torch.Tensor) and value.dim() == 4:
                yield value


def check_chunk(chunk_size: int | None) -> None:
    """Refuse a ``chunk_size`` that is neither ``None`` nor a positive integer."""
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ConfigError(f"chunk_size {chunk_size!r}: must be a positive integer")


def iter_jacobian(
    model: nn.Module,
    image: torch.Tensor,
    *,
    target_class: int = 1,
    output: str = "probability",
    pixels: object = None,
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    layer: str | None = None,
    strategy: str = "auto",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Stream the Jacobian: yield (flat pixel indices (n,), rows (n, C, H, W)) chunk by chunk,
    in the order of ``pixels``. Arguments as for :func:`jacobian`.

    Examples:
        >>> import torch
        >>> from vessel_lens.interpret import iter_jacobian
        >>> net = torch.nn.Conv2d(1, 2, 3, padding=1)  # any (B, C, H, W) -> (B, K, H, W) module
        >>> for flat, rows in iter_jacobian(net, torch.rand(1, 20, 20), chunk_size=150):
        ...     print(flat.shape, rows.shape)
        torch.Size([150]) torch.Size([150, 1, 20, 20])
        torch.Size([150]) torch.Size([150, 1, 20, 20])
        torch.Size([100]) torch.Size([100, 1, 20, 20])
    """
    check_chunk(chunk_size)
    engine = JacobianEngine(
        model,
        image,
        target_class=target_class,
        output=output,
        device=device,
        dtype=dtype,
        layer=layer,
        strategy=strategy,
    )
    flat = flat_pixels(pixels, engine.height, engine.width)
    yield from engine.chunks(flat, chunk_size)


def jacobian(
    model: nn.Module,
    image: torch.Tensor,
    *,
    target_class: int = 1,
    output: str = "probability",
    pixels: object = None,
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    layer: str | None = None,
    strategy: str = "auto",
) -> torch.Tensor:
    """Gradient of the output at each pixel with respect to the input: (N, C, H, W).

    Args:
        model: maps (B, C, H, W) to (B, K, H, W) logits; evaluated in eval mode, and its
            mode and parameters' ``requires_grad`` are restored afterwards.
        image: (C, H, W) or (H, W) (then C = 1).
        target_class: the class whose output is differentiated (for a one-channel model
            only 1, the vessel: its one channel).
        output: ``"probability"`` (softmax; sigmoid for one channel), ``"logit"``, or
            ``"margin"`` (target logit minus the log-sum-exp of the other logits; for one
            channel the logit itself, the log-odds of vessel against background).
        pixels: ``None`` (all H·W output pixels, row-major), flat indices (N,), or (N, 2)
            (row, col) pairs.
        chunk_size: rows per batched backward pass (default: sized to memory).
        device: where to compute (default: the model's device).
        dtype: float32 (default), float64, or bfloat16/float16 (``linear`` only: the forward
            pass stays float32, the backward pass runs in the lower precision).
        layer: name of a submodule (``model.named_modules()``); the gradient is then taken
            with respect to its output feature map and rows are (N, C_l, H_l, W_l).
        strategy: ``"auto"``, ``"linear"``, ``"vmap"`` or ``"loop"`` (see the module docs).

    Row n is d output[pixels[n]] / d source, on ``device``, in ``dtype``.

    Examples:
        >>> import torch
        >>> from vessel_lens.models import create_model
        >>> _ = torch.manual_seed(0)
        >>> model = create_model("resnet_seg", width=2).eval()  # or any (B, C, H, W) -> (B, K, H, W) net
        >>> image = torch.rand(1, 32, 32)  # (C, H, W)
        >>> from vessel_lens.interpret import jacobian
        >>> jacobian(model, image).shape  # every output pixel, row-major: (H*W, C, H, W)
        torch.Size([1024, 1, 32, 32])
        >>> jacobian(model, image, pixels=[(16, 16), (3, 30)], output="margin").shape
        torch.Size([2, 1, 32, 32])
    """
    check_chunk(chunk_size)
    engine = JacobianEngine(
        model,
        image,
        target_class=target_class,
        output=output,
        device=device,
        dtype=dtype,
        layer=layer,
        strategy=strategy,
    )
    flat = flat_pixels(pixels, engine.height, engine.width)
    order = torch.argsort(flat, stable=True)
    result = torch.empty((len(flat), *engine.source_shape), dtype=dtype, device=engine.device)
    done = 0
    for _, rows in engine.chunks(flat[order], chunk_size):
        result[order[done : done + len(rows)]] = rows
        done += len(rows)
    return result
