"""Image classification: a class per image, class-balanced subsets, McNemar's exact test on the
images only one of a ticket and its dense network gets right."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lottery.training.tasks.base import TASKS, Task, balanced_indices


def discordant(ticket: torch.Tensor, dense: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """Images only the ticket gets right, and images only the dense network gets right."""
    ticket_right, dense_right = ticket == labels, dense == labels
    return int((ticket_right & ~dense_right).sum()), int((dense_right & ~ticket_right).sum())


def mcnemar_from(b: int, c: int) -> float:
    """McNemar's exact p (two-sided binomial on the discordant pairs): is one classifier right
    where the other is wrong more often than chance?"""
    from scipy.stats import binomtest

    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)


@TASKS.registered()
class Classification(Task):
    name, inputs, shifted_sets, test = "classification", "images", True, "McNemar"
    balanced, augments = True, True

    def log_probs(self, out):
        return F.log_softmax(out.double(), 1)

    def outcome(self, out, y):
        return out.argmax(1).cpu()

    def accuracy(self, outcomes, y):
        return 100.0 * (outcomes == y.cpu()).sum().item() / len(y)

    def paired(self, ticket, dense, y):
        only_ticket, only_dense = discordant(ticket, dense, y.cpu())
        p = mcnemar_from(only_ticket, only_dense)
        return {"p_value": p, "mcnemar_p": p, "ticket_only_correct": only_ticket, "dense_only_correct": only_dense}

    def indices(self, y, n, seed):
        return balanced_indices(y, n, seed)

    def prepare(self, x, mean, std, channels_last):
        x = (x.float().div_(255) - mean) / std
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def tensors(self, x, y, device):
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # NHWC -> NCHW
        return xt.to(device), torch.from_numpy(np.asarray(y, np.int64)).to(device)

    def statistics(self, x):
        """Per-channel mean and std of the training images (float64 sums, in chunks)."""
        channels, device = x.shape[1], x.device
        sums = torch.zeros(channels, dtype=torch.float64, device=device)
        squares = torch.zeros(channels, dtype=torch.float64, device=device)
        for chunk in x.split(4096):
            v = chunk.double().div(255)
            sums += v.sum((0, 2, 3))
            squares += v.pow(2).sum((0, 2, 3))
        count = x.shape[0] * x.shape[2] * x.shape[3]
        mean = sums / count
        std = (squares / count - mean**2).clamp_min(1e-12).sqrt()
        return mean.float().view(1, channels, 1, 1), std.float().view(1, channels, 1, 1)

    def resident_bytes(self, shape):
        return int(np.prod(shape))  # uint8 pixels
