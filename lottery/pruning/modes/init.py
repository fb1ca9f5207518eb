"""``mode=init``: tickets at initialization (Algorithm 2, Tables 2-5): scored at theta_0, the kept
blocks keep theta_0 and train the whole schedule; with ``prune.rounds``, re-scored after each round."""

from lottery.pruning.modes.base import MODES, Mode


@MODES.registered()
class Init(Mode):
    name = "init"
    doc = "Algorithm 2 (tickets at initialization), Tables 2-5; with prune.rounds, re-scored after each round"
    scores_at_init = rescores = True

    def starting_network(self, origin, rewind):
        return origin.dense_at(0)
