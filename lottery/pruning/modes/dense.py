"""``mode=dense``: the reference network F itself, trained from theta_0 (nothing removed)."""

from lottery.pruning.modes.base import MODES, Mode


@MODES.registered()
class Dense(Mode):
    name, doc = "dense", "the reference network F"
    prunes = False

    def starting_network(self, origin, rewind):
        return origin.dense_at(0)
