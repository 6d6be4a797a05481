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

import torch
from torch.optim.adam import adam
from torch.optim.sgd import sgd

MOMENTUM = 0.9  # SGD's: the value of most SGD baselines (ResNet, VGG); one-cycle cycles it


class Adam:
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
        self.params = list(params)
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.weight_decay = weight_decay  # decoupled, as torch.optim.AdamW's
        # one step counter per tensor, on the CPU, as torch.optim.Adam keeps them
        self.step_counts = [torch.tensor(0.0) for _ in self.params]
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.param_groups = [{"params": self.params}]  # what GradScaler reads to unscale

    @property
    def steps(self) -> int:
        """Optimizer steps taken so far."""
        return int(self.step_counts[0])

    def set_schedule(self, lr: float, momentum: float) -> None:
        """The rate and momentum (Adam's beta1) of the next step, as one-cycle sets them."""
        self.lr, self.beta1 = lr, momentum

    def zero_grad(self) -> None:
        """Drop the gradients (the next backward writes fresh ones)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step with bias correction."""
        adam(
            self.params,
            [p.grad for p in self.params],
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


class SGD:
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
        self.params = list(params)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.step_counts = [torch.tensor(0.0) for _ in self.params]  # one-cycle's position
        # zeros, where torch starts from None and copies the first gradient: 0.9 * 0 + g is g
        # exactly, and a checkpoint always holds a buffer per tensor
        self.momentum_buffer = [torch.zeros_like(p) for p in self.params]
        self.param_groups = [{"params": self.params}]  # what GradScaler reads to unscale

    @property
    def steps(self) -> int:
        """Optimizer steps taken so far."""
        return int(self.step_counts[0])

    def set_schedule(self, lr: float, momentum: float) -> None:
        """The rate and momentum of the next step, as one-cycle sets them (OneCycleLR cycles
        SGD's momentum as it cycles Adam's beta1)."""
        self.lr, self.momentum = lr, momentum

    def zero_grad(self) -> None:
        """Drop the gradients (the next backward writes fresh ones)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One SGD step with momentum."""
        if self.weight_decay:
            torch._foreach_mul_(self.params, 1 - self.lr * self.weight_decay)
        sgd(
            self.params,
            [p.grad for p in self.params],
            self.momentum_buffer,
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


OPTIMIZERS = {"adam": Adam, "sgd": SGD}  # --optimizer's choices


def make_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0
) -> Adam | SGD:
    """The optimizer --optimizer names, at a rate, with a decoupled weight decay."""
    return OPTIMIZERS[name](params, lr, weight_decay=weight_decay)
