"""The optimizers (Adam, the report's; SGD with momentum, its control) and the one-cycle
schedule for main.py's training, by torch.optim's own arithmetic.

Why not torch.optim.Adam and SGD themselves: their Optimizer base class imports torch._dynamo at
first use, 2-3 s of every training command's start on our CPUs, for a compiler eager training
never calls. The documented functional forms `torch.optim.adam.adam` and `torch.optim.sgd.sgd`
do the same updates (the classes call them) without that import, so this module only keeps the
state. Delete it, and use torch.optim's classes and OneCycleLR again, once a torch release stops
importing torch._dynamo there (tests/test_core.py checks that a training process never imports
it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
from torch.optim.adam import adam
from torch.optim.sgd import sgd

MOMENTUM = 0.9  # SGD's: the value of most SGD baselines (ResNet, VGG); one-cycle cycles it


class Stepped:
    """What both optimizers keep besides their moments: the weights, a step counter per tensor
    (on the CPU, as torch.optim keeps them; one-cycle reads its position there) and what
    GradScaler reads to unscale."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float) -> None:
        self.params: list[torch.Tensor] = list(params)
        self.lr = lr
        self.step_counts = [torch.tensor(0.0) for _ in self.params]
        self.param_groups = [{"params": self.params}]

    @property
    def steps(self) -> int:
        """Optimizer steps taken so far."""
        return int(self.step_counts[0])

    def zero_grad(self) -> None:
        """Drop the gradients (the next backward writes fresh ones)."""
        for p in self.params:
            p.grad = None

    def grads(self) -> list[torch.Tensor]:
        """The gradients the last backward wrote (every weight of the CNN gets one)."""
        return [cast(torch.Tensor, p.grad) for p in self.params]


class Adam(Stepped):
    """torch.optim.Adam(foreach=True)'s state, stepped by torch's functional adam; with a
    weight decay, torch.optim.AdamW's (decoupled)."""

    state_keys = ("exp_avg", "exp_avg_sq")  # per tensor in state_dict, besides its step

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.weight_decay = weight_decay  # decoupled, as torch.optim.AdamW's
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def set_schedule(self, lr: float, momentum: float) -> None:
        """The rate and momentum (Adam's beta1) of the next step, as one-cycle sets them."""
        self.lr, self.beta1 = lr, momentum

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step with bias correction."""
        adam(
            self.params,
            self.grads(),
            self.exp_avg,
            self.exp_avg_sq,
            [],
            self.step_counts,
            foreach=True,
            amsgrad=False,
            beta1=self.beta1,
            beta2=self.beta2,
            lr=self.lr,
            weight_decay=self.weight_decay,
            decoupled_weight_decay=True,
            eps=self.eps,
            maximize=False,
        )

    def state_dict(self) -> dict:
        """The moments and step counts, in torch.optim.Adam's layout (older checkpoints load)."""
        return {
            "state": {
                i: {"step": s.clone(), "exp_avg": m, "exp_avg_sq": v}
                for i, (s, m, v) in enumerate(zip(self.step_counts, self.exp_avg, self.exp_avg_sq))
            }
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict wrote (lr and betas come from the run and its schedule)."""
        for i in range(len(self.params)):
            saved = state["state"][i]
            self.step_counts[i].fill_(float(saved["step"]))
            self.exp_avg[i].copy_(saved["exp_avg"])
            self.exp_avg_sq[i].copy_(saved["exp_avg_sq"])


class SGD(Stepped):
    """torch.optim.SGD(momentum=0.9, foreach=True)'s state, stepped by torch's functional sgd
    (heavy-ball momentum, no dampening, not Nesterov); a weight decay is decoupled, as Adam's
    is here (each step first shrinks every weight by lr*WD of itself), so --weight_decay means
    the same under both optimizers."""

    state_keys = ("momentum_buffer",)

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        momentum: float = MOMENTUM,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr)
        self.momentum, self.weight_decay = momentum, weight_decay
        # zeros, where torch starts from None and copies the first gradient: 0.9 * 0 + g is g
        # exactly, and a checkpoint always holds a buffer per tensor
        self.momentum_buffer = [torch.zeros_like(p) for p in self.params]

    def set_schedule(self, lr: float, momentum: float) -> None:
        """The rate and momentum of the next step, as one-cycle sets them (OneCycleLR cycles
        SGD's momentum as it cycles Adam's beta1)."""
        self.lr, self.momentum = lr, momentum

    @torch.no_grad()
    def step(self) -> None:
        """One SGD step with momentum."""
        if self.weight_decay:
            torch._foreach_mul_(self.params, 1 - self.lr * self.weight_decay)
        sgd(
            self.params,
            self.grads(),
            cast(list[torch.Tensor | None], self.momentum_buffer),  # filled in place
            foreach=True,
            weight_decay=0.0,
            momentum=self.momentum,
            lr=self.lr,
            dampening=0.0,
            nesterov=False,
            maximize=False,
        )
        for count in self.step_counts:
            count += 1

    def state_dict(self) -> dict:
        """The momentum buffers and step counts, in torch.optim.SGD's layout plus the step."""
        return {
            "state": {
                i: {"step": s.clone(), "momentum_buffer": b}
                for i, (s, b) in enumerate(zip(self.step_counts, self.momentum_buffer))
            }
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict wrote (lr and momentum come from the run and its schedule)."""
        for i in range(len(self.params)):
            saved = state["state"][i]
            self.step_counts[i].fill_(float(saved["step"]))
            self.momentum_buffer[i].copy_(saved["momentum_buffer"])


OPTIMIZERS: dict[str, type[Adam] | type[SGD]] = {"adam": Adam, "sgd": SGD}  # --optimizer's


def make_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0
) -> Adam | SGD:
    """The optimizer --optimizer names, at a rate, with a decoupled weight decay."""
    return OPTIMIZERS[name](params, lr, weight_decay=weight_decay)
