"""Next-token prediction on fixed-length token sequences: accuracy and loss per next token,
perplexity, seeded draws of sequences (they have no class), and paired t-tests over the same
held-out sequences."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from lottery.training.tasks.base import TASKS, Task, paired_t

MAX_EXP = 709.0  # exp of more overflows a float: a diverged model's perplexity is inf


@TASKS.registered()
class LanguageModeling(Task):
    """Next-token prediction on fixed-length sequences: every position predicts the next symbol."""

    name, inputs, shifted_sets = "language_modeling", "tokens", False
    test = "paired t on sequence accuracies"
    balanced, augments = False, False

    def log_probs(self, out):
        return F.log_softmax(out.double(), -1)

    def outcome(self, out, y):
        """Per sequence: its summed token loss (nats, float64) and its correctly predicted tokens
        (in chunks of sequences, so a large vocabulary's float64 logits stay within ~256 MB)."""
        rows = max(1, (1 << 25) // (out.shape[1] * out.shape[2]))
        parts = []
        for o, t in zip(out.split(rows), y.split(rows)):
            losses = F.cross_entropy(o.double().flatten(0, -2), t.flatten(), reduction="none").view(t.shape)
            parts.append(torch.stack([losses.sum(1), (o.argmax(-1) == t).sum(1).double()], 1).cpu())
        return torch.cat(parts)

    def accuracy(self, outcomes, y):
        return 100.0 * outcomes[:, 1].sum().item() / y.numel()

    def summary(self, outcomes, y):
        loss = outcomes[:, 0].sum().item() / y.numel()
        return {"loss": loss, "perplexity": math.exp(loss) if loss < MAX_EXP else math.inf}

    def paired(self, ticket, dense, y):
        """Paired t-tests over the same held-out sequences, ticket minus dense: of the sequences'
        next-token accuracies (``p_value``: the test of the accuracy delta Eq. 1 reads), and of
        their mean token losses (``loss_p_value``, with the 95 % interval of the mean difference in
        nats per token)."""
        tokens = y.shape[1]
        accuracy = paired_t(100.0 * (ticket[:, 1] - dense[:, 1]).numpy() / tokens)
        loss = paired_t(((ticket[:, 0] - dense[:, 0]) / tokens).numpy())
        return {"p_value": accuracy[1], "loss_delta": loss[0], "loss_p_value": loss[1],
                **({"loss_delta_ci_low": loss[2], "loss_delta_ci_high": loss[3]} if loss[2] is not None else {})}

    def indices(self, y, n, seed):
        return np.random.default_rng(seed).permutation(len(y))[:n].astype(np.int64)

    def prepare(self, x, mean, std, channels_last):
        return x.long()  # token ids, resident narrow (``tensors``), as the embedding reads them

    def tensors(self, x, y, device):
        """Windows of T + 1 tokens, resident once in the narrowest integer type their ids fit (bytes:
        uint8, 1/16 of int64 inputs plus targets: byte-level WikiText-103 in about 0.5 GB, not 8),
        as two views of that one array: inputs (the first T) and targets (the last T). A batch is
        widened to int64 on the device (``prepare``, ``Dataset.targets``)."""
        windows = torch.from_numpy(np.ascontiguousarray(x, narrowest(x))).to(device)
        return windows[:, :-1], windows[:, 1:]

    def statistics(self, x):
        return torch.zeros((), device=x.device), torch.ones((), device=x.device)  # token ids are not normalised

    def resident_bytes(self, shape):
        return int(np.prod(shape)) + 1  # one uint8 window of T + 1 tokens (the text sources' vocabulary: bytes)


def narrowest(ids: np.ndarray) -> np.dtype:
    """The narrowest integer type holding these token ids: uint8 for bytes (a vocabulary of at
    most 256), else int16, int32 or int64 as the largest id needs."""
    top = int(ids.max(initial=0))
    return np.dtype(next(t for t in (np.uint8, np.int16, np.int32, np.int64) if top <= np.iinfo(t).max))
