"""AdamW written with plain tensor operations, so that training never imports ``torch._dynamo``.

``torch.optim.Optimizer`` wraps ``add_param_group``, ``step``, ``zero_grad`` and the state
dict methods in ``torch._disable_dynamo`` / ``_use_grad_for_differentiable``, which import
``torch._dynamo`` on first use, and dynamo imports triton when it is installed (the CUDA
builds of PyTorch). In a napari process drawing through Mesa's software OpenGL, triton's LLVM
clashes with the libLLVM Mesa loaded and the process dies with a segmentation fault. This
class is the same algorithm (Loshchilov & Hutter, "Decoupled Weight Decay Regularization",
as in ``torch.optim.AdamW``'s documentation) with none of that machinery.

It duck-types what the trainer and ``torch.amp.GradScaler`` use: ``param_groups``,
``state``, ``step()``, ``zero_grad()``, ``state_dict()`` and ``load_state_dict()``; the state
dict has ``torch.optim.AdamW``'s layout, so checkpoints written with either load in both.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


class AdamW:
    """AdamW over ``params`` (one parameter group).

    Attributes:
        param_groups: one dict with ``params``, ``lr``, ``betas``, ``eps``, ``weight_decay``.
        state: per parameter: ``step`` (a float tensor), ``exp_avg``, ``exp_avg_sq``.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        params = list(params)
        if not params:
            raise ValueError("The optimizer got no parameters.")
        self.defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                         "amsgrad": False, "maximize": False, "differentiable": False}
        self.param_groups: list[dict[str, Any]] = [{"params": params, **self.defaults}]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        if closure is not None:
            raise ValueError("This AdamW takes no closure.")
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            eps, wd = group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state.get(p)
                if state is None:
                    state = self.state[p] = {
                        "step": torch.tensor(0.0),
                        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                    }
                state["step"] += 1
                step = float(state["step"])
                p.mul_(1 - lr * wd)
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias1 = 1 - beta1**step
                bias2_sqrt = math.sqrt(1 - beta2**step)
                denom = (state["exp_avg_sq"].sqrt() / bias2_sqrt).add_(eps)
                p.addcdiv_(state["exp_avg"], denom, value=-lr / bias1)

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Optimizer.state_dict``'s layout: parameters by their index."""
        index = {p: i for i, p in enumerate(self.param_groups[0]["params"])}
        groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": [index[p] for p in g["params"]]} for g in self.param_groups]
        state = {index[p]: {k: v.clone() for k, v in s.items()} for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = state_dict["param_groups"]
        params = self.param_groups[0]["params"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(params):
            raise ValueError("The optimizer state belongs to another model.")
        saved = {k: v for k, v in groups[0].items() if k != "params"}
        saved["betas"] = tuple(saved.get("betas", self.defaults["betas"]))
        self.param_groups[0].update(saved)
        by_index = dict(zip(groups[0]["params"], params))
        self.state = {}
        for i, s in state_dict["state"].items():
            p = by_index[int(i)]
            self.state[p] = {
                "step": torch.as_tensor(s["step"], dtype=torch.float32).clone(),
                "exp_avg": s["exp_avg"].to(p.device, p.dtype).clone(),
                "exp_avg_sq": s["exp_avg_sq"].to(p.device, p.dtype).clone(),
            }
