"""``mode=reinit``: random re-initialisation (Liu et al. 2019): scored at theta_n, the kept blocks
start from a fresh initialisation of another seed and train the whole schedule."""

from lottery.pruning.modes.base import MODES, Mode

# Offset that makes a re-initialised ticket's weights independent of the dense theta_0.
SEED_OFFSET = 1_000_000


@MODES.registered()
class Reinit(Mode):
    name, doc = "reinit", "random re-initialisation (Liu et al. 2019)"

    def starting_network(self, origin, rewind):
        return origin.fresh(SEED_OFFSET)
