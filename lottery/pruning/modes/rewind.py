"""``mode=rewind``: LTH with rewinding (Algorithm 1, Table 1): scored at theta_n, the kept blocks
rewound to theta_i, trained n - i epochs of the dense schedule; with ``prune.rounds``, layer-wise
IMP (trained and rewound between rounds)."""

from lottery.pruning.modes.base import MODES, Mode


@MODES.registered()
class Rewind(Mode):
    name = "rewind"
    doc = "Algorithm 1 (LTH with rewinding), Table 1; with prune.rounds, layer-wise IMP"
    rewinds = resumes_schedule = retrains = True

    def starting_network(self, origin, rewind):
        return origin.dense_at(rewind)

    def kept_rewind(self, rewind):
        return rewind
