"""The ACT reasoner: a small recurrent transformer that thinks in steps and learns when to stop.

Read it in three layers, as in HRM / the Tiny Recursive Model:

1. `ReasonerInner.forward` — ONE reasoning step. Two latent states, z_H (the slow, high level,
   whose read-out is the answer) and z_L (the fast, low level), are refined by the SAME kind of
   block (`course_lib.core.layers.Block`, causal=False: every cell of the puzzle sees every other):
   `H_cycles` × `L_cycles` low-level updates, then a high-level update. All of them run under
   `no_grad` except the very last L and H updates: the "one-step gradient", which makes a deep
   recurrence cost one step of memory and backward time.
2. `ACTReasoner.forward` — ONE ACT step on a batch with a `Carry`. Rows that halted last time
   are reset to the initial states and take new puzzles; every row gets one reasoning step;
   `steps += 1`; a row halts when `steps >= halt_max_steps` or, in training only, when the Q head
   says "halt" (with random minimum steps, the exploration).
3. The loop around it (`halting.py`): call again and again until every row has halted.

The Q head reads z_H at an extra first position (the "halt slot", like the reference's puzzle
embedding slot) and outputs two logits (halt, continue); its bias starts at -5 so that early in
training the model almost never stops on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from course_lib.core.layers import Block, RMSNorm, rope_angles

from . import puzzles as P

DEFAULT_CONFIG: dict = {
    "vocab_size": P.VOCAB_SIZE,
    "seq_len": P.SEQ_LEN,
    "hidden_size": 64,
    "num_heads": 4,
    "H_layers": 1,
    "L_layers": 1,
    "H_cycles": 2,
    "L_cycles": 2,
    "halt_max_steps": 8,
    "halt_exploration_prob": 0.1,
    "act_continue": False,   # True: also learn q_continue (HRM's bootstrapped target, one extra forward per step)
    "rope_theta": 10000.0,
}
HALT_SLOTS = 1  # positions in front of the puzzle: the Q head reads slot 0


@dataclass
class InnerCarry:
    z_H: torch.Tensor  # (B, 1 + seq_len, hidden)
    z_L: torch.Tensor  # (B, 1 + seq_len, hidden)


@dataclass
class Carry:
    """Everything the loop hands from one ACT step to the next."""

    inner: InnerCarry
    steps: torch.Tensor                      # (B,) int: reasoning steps taken on the current puzzle
    halted: torch.Tensor                     # (B,) bool: this row is done; next call loads new data
    current_data: dict[str, torch.Tensor] = field(default_factory=dict)  # the puzzle each row works on


class Level(nn.Module):
    """A stack of shared Blocks fed `state + injection`; the closing RMSNorm keeps the recurrent state bounded.

    (Block is pre-norm, so without it the residual stream would grow a little on every step.)
    """

    def __init__(self, cfg: dict, layers: int):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg["hidden_size"], cfg["num_heads"], causal=False) for _ in range(layers))
        self.norm = RMSNorm(cfg["hidden_size"])

    def forward(self, z: torch.Tensor, injection: torch.Tensor, rope) -> torch.Tensor:
        z = z + injection
        for block in self.blocks:
            z = block(z, rope)
        return self.norm(z)


class ReasonerInner(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        h = cfg["hidden_size"]
        self.embed_scale = math.sqrt(h)
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], h)
        nn.init.normal_(self.embed_tokens.weight, std=1.0 / self.embed_scale)
        self.halt_slot = nn.Parameter(torch.zeros(1, HALT_SLOTS, h))
        self.H_level = Level(cfg, cfg["H_layers"])
        self.L_level = Level(cfg, cfg["L_layers"])
        self.lm_head = nn.Linear(h, cfg["vocab_size"], bias=False)
        self.q_head = nn.Linear(h, 2, bias=True)
        # Q head: zero weights, bias -5 -> sigmoid(-5) = 0.7%: "do not halt yet" until it has learned better.
        with torch.no_grad():
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)
        # Fixed random initial states (buffers, not trained), the same for every puzzle.
        g = torch.Generator().manual_seed(0)
        self.register_buffer("H_init", torch.randn(h, generator=g).clamp(-2, 2))
        self.register_buffer("L_init", torch.randn(h, generator=g).clamp(-2, 2))
        self.register_buffer("position_ids", torch.arange(HALT_SLOTS + cfg["seq_len"]), persistent=False)

    def input_embeddings(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(inputs) * self.embed_scale                    # (B, T, h)
        return torch.cat([self.halt_slot.expand(len(x), -1, -1), x], dim=1)  # (B, 1 + T, h)

    def empty_carry(self, batch_size: int, device=None) -> InnerCarry:
        shape = (batch_size, HALT_SLOTS + self.cfg["seq_len"], self.cfg["hidden_size"])
        device = device or self.H_init.device
        return InnerCarry(torch.empty(shape, device=device), torch.empty(shape, device=device))

    def reset_carry(self, reset: torch.Tensor, carry: InnerCarry) -> InnerCarry:
        """Rows with reset=True go back to the initial states (a new puzzle starts from scratch)."""
        r = reset.view(-1, 1, 1)
        return InnerCarry(torch.where(r, self.H_init, carry.z_H), torch.where(r, self.L_init, carry.z_L))

    def forward(self, carry: InnerCarry, inputs: torch.Tensor):
        """One reasoning step -> (new carry (detached), logits (B, T, vocab), q_halt (B,), q_continue (B,))."""
        cfg = self.cfg
        rope = rope_angles(self.position_ids, cfg["hidden_size"] // cfg["num_heads"], cfg["rope_theta"])
        x = self.input_embeddings(inputs)
        z_H, z_L = carry.z_H, carry.z_L
        with torch.no_grad():  # every update but the last L and the last H: no graph, no memory
            for h_step in range(cfg["H_cycles"]):
                for l_step in range(cfg["L_cycles"]):
                    if not (h_step == cfg["H_cycles"] - 1 and l_step == cfg["L_cycles"] - 1):
                        z_L = self.L_level(z_L, z_H + x, rope)
                if h_step != cfg["H_cycles"] - 1:
                    z_H = self.H_level(z_H, z_L, rope)
        # The one-step gradient: only these two updates are differentiated.
        z_L = self.L_level(z_L, z_H + x, rope)
        z_H = self.H_level(z_H, z_L, rope)
        logits = self.lm_head(z_H[:, HALT_SLOTS:])
        q = self.q_head(z_H[:, 0]).float()
        return InnerCarry(z_H.detach(), z_L.detach()), logits, q[:, 0], q[:, 1]


class ACTReasoner(nn.Module):
    """The ACT wrapper: carry in, carry out, one reasoning step per call (the reference's semantics)."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        self.config = {**DEFAULT_CONFIG, **(config or {})}
        unknown = set(self.config) - set(DEFAULT_CONFIG)
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(DEFAULT_CONFIG)}")
        self.inner = ReasonerInner(self.config)

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> Carry:
        """Every row starts HALTED, so the first call loads the batch into every row."""
        B = len(batch["inputs"])
        device = batch["inputs"].device
        return Carry(
            inner=self.inner.empty_carry(B, device),
            steps=torch.zeros(B, dtype=torch.long, device=device),
            halted=torch.ones(B, dtype=torch.bool, device=device),
            current_data={k: torch.empty_like(v) for k, v in batch.items()},
        )

    def forward(self, carry: Carry, batch: dict[str, torch.Tensor]) -> tuple[Carry, dict[str, torch.Tensor]]:
        cfg = self.config
        inner = self.inner.reset_carry(carry.halted, carry.inner)
        steps = torch.where(carry.halted, 0, carry.steps)
        data = {k: torch.where(carry.halted.view(-1, *[1] * (v.dim() - 1)), batch[k], v) for k, v in carry.current_data.items()}

        inner, logits, q_halt, q_continue = self.inner(inner, data["inputs"])
        outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue}

        with torch.no_grad():
            steps = steps + 1
            is_last = steps >= cfg["halt_max_steps"]
            halted = is_last
            if self.training and cfg["halt_max_steps"] > 1:
                # Learned halting, trained only here; at evaluation the whole batch runs to the max.
                halted = halted | (q_halt > (q_continue if cfg["act_continue"] else 0))
                # Exploration: with some probability a row must run a random minimum number of steps,
                # so the Q head also sees what happens when it would have stopped too early.
                explore = torch.rand_like(q_halt) < cfg["halt_exploration_prob"]
                min_steps = explore * torch.randint_like(steps, 2, cfg["halt_max_steps"] + 1)
                halted = halted & (steps >= min_steps)
                if cfg["act_continue"]:
                    # HRM's bootstrapped target: the value of continuing = the next step's best Q.
                    _, _, next_halt, next_cont = self.inner(inner, data["inputs"])
                    outputs["target_q_continue"] = torch.sigmoid(
                        torch.where(is_last, next_halt, torch.maximum(next_halt, next_cont)))
        return Carry(inner, steps, halted, data), outputs

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
