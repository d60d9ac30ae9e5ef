"""Hugging Face ``transformers`` causal language models on xent's linear cross-entropy.

``xent.transformers.apply(model)`` makes a causal LM compute its training loss with
`xent.torch.linear_cross_entropy` from the hidden states that go into its output embeddings
(``model.get_output_embeddings()``, the ``lm_head``) and that layer's weight and bias: the
``(tokens, vocabulary)`` logits are never built when ``labels`` are given in training mode.
Everything else is the model's own forward: it runs as it is, with the head's call replaced by
one that records its input and returns an empty ``(..., 0)`` tensor, so the backbone, the
``logits_to_keep`` slicing, the cache and any other output are the stock ones. The loss is the
stock one (``transformers.loss.loss_utils.ForCausalLMLoss``): labels shifted by one with
``ignore_index`` (-100) padding, or ``shift_labels`` as given; the mean over non-ignored tokens,
or the sum divided by ``num_items_in_batch`` (the Trainer's gradient-accumulation count);
``final_logit_softcapping`` (Gemma 2 / 3) as `linear_cross_entropy`'s ``softcap``; the head's
bias; a tied head (the embedding matrix) as it is; an MoE model's router loss added as its
forward adds it. See docs/torch.md, "Hugging Face transformers".

Which models: any ``PreTrainedModel`` whose loss, found by running it, is that one. `apply` runs
the stock forward once on a 5-token input (eval mode, no gradient, the random state kept) and
checks that the forward calls its output embeddings (a plain ``torch.nn.Linear``) exactly once,
that the logits it returns are that layer's output (or their soft-capping by
``final_logit_softcapping``) and that its loss equals xent's on the same input (with and
without ``num_items_in_batch``). A model that fails any check is refused with
`UnsupportedModelError` naming its class and the reason, before anything is changed.

``transformers`` is imported only when a function here is called (``pip install
'xent[transformers]'``); ``import xent.torch`` does not import it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import math
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["UnsupportedModelError", "apply", "is_applied", "patched", "revert"]

#: Attribute of the model holding its `_Plan` while the patch is active.
_STATE = "_xent_linear_ce"
#: Marks the forward functions this module installs.
_MARK = "_xent_linear_ce_forward"


class UnsupportedModelError(TypeError):
    """`apply` cannot reproduce this model's loss from its last hidden states; the message names
    the model's class and the reason. The model was left unchanged."""


def _transformers() -> Any:
    try:
        return importlib.import_module("transformers")
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("xent.transformers needs Hugging Face transformers: "
                          "pip install 'xent[transformers]'") from exc


@dataclass
class _Plan:
    """What the patched forward needs, found by `_probe`."""

    softcap: bool  # the forward soft-caps the logits by the config's final_logit_softcapping
    chunk_size: int | None  # rows per chunk for linear_cross_entropy (None: its default)
    previous: Any  # the instance attribute ``forward`` before `apply`, or None


def _text_config(model: Any) -> Any:
    config = model.config
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def _softcap_value(model: Any) -> float | None:
    cap = getattr(_text_config(model), "final_logit_softcapping", None)
    return None if cap is None else float(cap)


def _head(model: Any) -> Any:
    """The output embeddings, checked to be a plain ``nn.Linear`` (its own forward)."""
    import torch

    name = type(model).__name__
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        raise UnsupportedModelError(
            f"{name}: get_output_embeddings() returned None: expected the language-model head, "
            "a torch.nn.Linear on the last hidden states")
    if not isinstance(head, torch.nn.Linear) or "forward" in head.__dict__ or (
            type(head).forward is not torch.nn.Linear.forward):
        raise UnsupportedModelError(
            f"{name}: its output embeddings are a {type(head).__module__}.{type(head).__name__}, "
            "not a plain torch.nn.Linear: xent can only fuse a linear head (x @ W.T + b)")
    if head.weight.dim() != 2:
        raise UnsupportedModelError(
            f"{name}: the head's weight has shape {tuple(head.weight.shape)}, expected "
            "(vocabulary, hidden)")
    return head


def _causal_lm_loss(hidden: Any, weight: Any, bias: Any, labels: Any, *, softcap: float | None,
                    num_items_in_batch: Any = None, ignore_index: int = -100,
                    shift_labels: Any = None, chunk_size: int | None = None,
                    model_name: str = "model") -> Any:
    """``ForCausalLMLoss(hidden @ W.T + b)`` without the logits: float32, as the stock loss."""
    import torch
    import torch.nn.functional as F

    from xent.torch import linear_cross_entropy

    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    x = hidden.reshape(-1, hidden.shape[-1])
    target = shift_labels.reshape(-1).to(x.device)
    if target.shape[0] != x.shape[0]:
        raise ValueError(
            f"{model_name}: {x.shape[0]} hidden positions reach the head (logits_to_keep applied) "
            f"but the labels have {target.shape[0]} after the shift: expected one label per "
            "position, as the stock loss does")
    reduction = "sum" if num_items_in_batch is not None else "mean"
    # float32, as the stock loss (which upcasts the logits). A 16-bit input (bfloat16 autocast, a
    # bfloat16 model) gives xent's float32 sum rounded once to 16 bits (linear_cross_entropy
    # returns its input's dtype), then cast.
    out: Any = linear_cross_entropy(x, weight, target, linear_bias=bias, reduction=reduction,
                                    ignore_index=ignore_index, softcap=softcap,
                                    chunk_size=chunk_size)
    loss = out.float()
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


def _labels_position(func: Any) -> int | None:
    """The positional index of ``labels`` in a bound forward's signature, or None."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return None
    for i, p in enumerate(params):
        if p.name == "labels":
            kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            return i if p.kind in kinds else None
    return None


def _run_recorded(model: Any, stock: Any, args: tuple, kwargs: dict) -> tuple[Any, list]:
    """The stock forward with the head's call replaced by one that records its input and
    returns an empty ``(..., 0)`` tensor: (the forward's output, the recorded inputs)."""
    head = model.get_output_embeddings()
    calls: list[Any] = []

    def record(hidden):
        calls.append(hidden)
        return hidden.new_empty((*hidden.shape[:-1], 0))

    had = "forward" in head.__dict__
    before = head.__dict__.get("forward")
    head.forward = record
    try:
        out = stock(*args, **kwargs)
    finally:
        if had:
            head.forward = before
        else:
            del head.forward
    return out, calls


def _fused_loss(model: Any, plan: _Plan, out: Any, calls: list, kwargs: dict,
                labels: Any) -> Any:
    """The output of `_run_recorded` with xent's loss in place of the (absent) logits."""
    transformers = _transformers()
    name = type(model).__name__
    if len(calls) != 1:
        raise RuntimeError(
            f"{name}: the forward called its output embeddings {len(calls)} times in training "
            "mode (once when xent.transformers.apply checked it): xent cannot tell which call "
            "gives the logits; revert the model (xent.transformers.revert)")
    head = model.get_output_embeddings()
    loss = _causal_lm_loss(
        calls[0], head.weight, head.bias, labels,
        softcap=_softcap_value(model) if plan.softcap else None,
        num_items_in_batch=kwargs.get("num_items_in_batch"),
        ignore_index=kwargs.get("ignore_index", -100), shift_labels=kwargs.get("shift_labels"),
        chunk_size=plan.chunk_size, model_name=name)
    if isinstance(out, transformers.utils.ModelOutput):
        fields = {k: v for k, v in out.items() if k not in ("logits", "loss")}
        aux = fields.get("aux_loss")
        router = kwargs.get("output_router_logits",
                            getattr(_text_config(model), "output_router_logits", False))
        if aux is not None and router:
            loss = loss + _router_coef(model) * aux.to(loss.device)
        return type(out)(loss=loss, **fields)
    if isinstance(out, tuple):  # return_dict=False: (logits, ...) without a loss
        return (loss, *out[1:])
    raise RuntimeError(f"{name}: the forward returned a {type(out).__name__}, expected a "
                       "transformers ModelOutput or a tuple")


def _router_coef(model: Any) -> float:
    coef = getattr(model, "router_aux_loss_coef", None)
    if coef is None:
        coef = getattr(_text_config(model), "router_aux_loss_coef", None)
    if coef is None:
        raise RuntimeError(f"{type(model).__name__}: the forward returned a router aux_loss but "
                           "neither the model nor its config has router_aux_loss_coef")
    return float(coef)


def _make_forward(previous: Any, cls_forward: Any) -> Any:
    @functools.wraps(cls_forward)
    def forward(self, *args, **kwargs):
        stock = previous if previous is not None else types.MethodType(cls_forward, self)
        skip_logits = kwargs.pop("skip_logits", None)
        plan = self.__dict__.get(_STATE)
        if plan is None:
            return stock(*args, **kwargs)
        pos = _labels_position(stock)
        if pos is not None and len(args) > pos:
            labels = args[pos]
            args = (*args[:pos], None, *args[pos + 1:])
        else:
            labels = kwargs.pop("labels", None)
        fused = self.training if skip_logits is None else bool(skip_logits)
        if not fused or labels is None:  # the stock loss needs labels (shift_labels alone: none)
            if labels is not None:
                if pos is not None and len(args) > pos:
                    args = (*args[:pos], labels, *args[pos + 1:])
                else:
                    kwargs["labels"] = labels
            return stock(*args, **kwargs)
        out, calls = _run_recorded(self, stock, args, kwargs)
        return _fused_loss(self, plan, out, calls, kwargs, labels)

    setattr(forward, _MARK, True)
    return forward


def _install(model: Any, plan: _Plan) -> None:
    forward = _make_forward(plan.previous, type(model).forward)
    model.__dict__[_STATE] = plan
    model.forward = types.MethodType(forward, model)


@contextlib.contextmanager
def _probing(model: Any) -> Iterator[None]:
    """Eval mode, no gradient, the random state and every module's training flag restored."""
    import torch

    modes = [(m, m.training) for m in model.modules()]
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.eval()
            yield
    finally:
        for m, mode in modes:
            m.training = mode


def _close(a: Any, b: Any, dtype: Any) -> bool:
    import torch

    if a.shape != b.shape:
        return False
    tol = 1e-5 if dtype in (torch.float32, torch.float64) else 3e-2
    a, b = a.double(), b.double()
    scale = float(b.abs().max()) if b.numel() else 0.0
    return bool(torch.allclose(a, b, rtol=tol, atol=tol * max(scale, 1e-30)))


def _probe(model: Any, chunk_size: int | None) -> _Plan:
    """Run the stock forward on a small input and check that xent reproduces its loss."""
    import torch

    transformers = _transformers()
    name = type(model).__name__
    if not isinstance(model, transformers.PreTrainedModel):
        raise UnsupportedModelError(
            f"expected a transformers PreTrainedModel (a causal LM such as LlamaForCausalLM), "
            f"got {type(model).__module__}.{name}")
    head = _head(model)
    vocab, _hidden = head.weight.shape
    device = head.weight.device
    ids = (torch.arange(5, device=device) * 7 + 3).remainder(vocab)[None]
    labels = ids.clone()
    labels[0, 2] = -100
    stock_forward = model.forward
    try:
        params = inspect.signature(stock_forward).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    var_kw = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "labels" not in params and not var_kw:
        raise UnsupportedModelError(f"{name}: its forward takes no labels argument: not a "
                                    "causal LM that computes its own loss")
    with _probing(model):
        seen: list[tuple[Any, Any]] = []
        hook = head.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
        try:
            out = model(input_ids=ids, labels=labels)
        except Exception as exc:
            raise UnsupportedModelError(
                f"{name}: its forward failed on a 5-token input_ids/labels batch "
                f"({type(exc).__name__}: {exc}): xent checks a model on such an input") from exc
        finally:
            hook.remove()
        stock_loss = out.get("loss") if isinstance(out, dict) else (
            out[0] if isinstance(out, tuple) else None)
        logits = out.get("logits") if isinstance(out, dict) else (
            out[1] if isinstance(out, tuple) and len(out) > 1 else None)
        if stock_loss is None or logits is None:
            raise UnsupportedModelError(f"{name}: its forward returned no loss and logits for "
                                        "labels: not a causal LM that computes its own loss")
        if len(seen) != 1:
            raise UnsupportedModelError(
                f"{name}: its forward called its output embeddings {len(seen)} times, expected "
                "once (the head on the last hidden states)")
        hidden, z = seen[0]
        cap = _softcap_value(model)
        capped = None if cap is None else torch.tanh(z.double() / cap) * cap
        dt = z.dtype
        softcap = capped is not None and _close(logits, capped, dt)
        if not softcap and not (logits is z or _close(logits, z, dt)):
            raise UnsupportedModelError(
                f"{name}: the logits its forward returns are not its head's output"
                + ("" if cap is None else " nor their soft-capping by final_logit_softcapping")
                + ": the forward transforms them (a logit scale, a slice, another head) in a way "
                "xent does not reproduce")
        plan = _Plan(softcap=softcap, chunk_size=chunk_size, previous=model.__dict__.get("forward"))
        checks: list[dict] = [{}]
        if var_kw:
            checks.append({"num_items_in_batch": torch.tensor(3, device=device)})
        if "output_router_logits" in params:
            checks.append({"output_router_logits": True})
        for extra in checks:
            ref = stock_loss if not extra else model(input_ids=ids, labels=labels, **extra)[0]
            kwargs = {"input_ids": ids, **extra}
            try:
                out2, calls = _run_recorded(model, stock_forward, (), kwargs)
            except Exception as exc:
                raise UnsupportedModelError(
                    f"{name}: its forward failed with the head's output replaced by an empty "
                    f"tensor ({type(exc).__name__}: {exc}): it uses the logits other than by "
                    "returning them") from exc
            if len(calls) != 1:
                raise UnsupportedModelError(
                    f"{name}: without labels its forward called its output embeddings "
                    f"{len(calls)} times, expected once")
            ours = _fused_loss(model, plan, out2, calls, kwargs, labels)
            ours_loss = ours[0] if isinstance(ours, tuple) else ours.loss
            if not _close(ours_loss.reshape(()), ref.float().reshape(()), dt):
                what = ", ".join(f"{k}={v!r}" for k, v in extra.items()) or "labels alone"
                raise UnsupportedModelError(
                    f"{name}: its loss ({what}) is {float(ref):.8g} where the causal-LM "
                    f"cross-entropy of its head's output is {float(ours_loss):.8g}: its loss "
                    "is not the one xent computes (ForCausalLMLoss)")
        if not math.isfinite(float(stock_loss)):
            raise UnsupportedModelError(f"{name}: its loss on the check input is "
                                        f"{float(stock_loss)}")
    return plan


def is_applied(model: Any) -> bool:
    """Whether `apply` is in effect on ``model``."""
    return isinstance(getattr(model, "__dict__", None), dict) and _STATE in model.__dict__


def apply(model: Any, *, chunk_size: int | None = None) -> Any:
    """Make ``model`` compute its training loss with `xent.torch.linear_cross_entropy`.

    With ``labels`` (or ``shift_labels``) in training mode (``model.training``) the forward
    returns the stock loss, computed from the head's input without building the logits, and no
    ``logits`` (``None``; the stock forward returns the ``(batch, sequence, vocabulary)``
    logits). In eval mode, or without labels (``generate``, evaluation that asks for logits),
    the stock forward runs and returns what it always does. ``skip_logits=True`` / ``False``
    in a call overrides the choice (True: xent's loss and no logits even in eval mode).

    Args:
        model: a ``transformers`` ``PreTrainedModel`` causal LM.
        chunk_size: rows per chunk of `linear_cross_entropy` (default: its 128 MiB buffer).

    Returns:
        ``model`` itself, patched (an instance attribute ``forward``; its class, parameters and
        ``state_dict`` are unchanged). A second call changes nothing.

    Raises:
        UnsupportedModelError: ``model`` is not a causal LM whose loss xent reproduces (see the
            module's docstring); nothing was changed.
        ValueError: ``chunk_size`` is not a positive integer.
    """
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if is_applied(model):
        model.__dict__[_STATE].chunk_size = chunk_size
        return model
    plan = _probe(model, chunk_size)
    _install(model, plan)
    return model


def revert(model: Any) -> Any:
    """Undo `apply`: the model's forward is its own again. Returns ``model``; a model that was
    not patched is returned unchanged."""
    if not is_applied(model):
        return model
    plan = model.__dict__.pop(_STATE)
    current = model.__dict__.get("forward")
    if getattr(getattr(current, "__func__", None), _MARK, False):
        if plan.previous is None:
            del model.forward
        else:
            model.forward = plan.previous
    # Otherwise something wrapped the patched forward since: it stays, and passes calls through.
    return model


@contextlib.contextmanager
def patched(model: Any, *, chunk_size: int | None = None) -> Iterator[Any]:
    """``with xent.transformers.patched(model): ...``: `apply` for the block, then `revert`
    (unless the model was patched already)."""
    was = is_applied(model)
    apply(model, chunk_size=chunk_size)
    try:
        yield model
    finally:
        if not was:
            revert(model)
