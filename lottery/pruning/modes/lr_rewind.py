"""``mode=lr_rewind``: learning-rate rewinding (Renda et al. 2020): scored at theta_n, the kept
blocks keep theta_n and train n - i epochs with the schedule resumed at epoch i."""

from lottery.pruning.modes.base import MODES, Mode


@MODES.registered()
class LrRewind(Mode):
    name, doc = "lr_rewind", "learning-rate rewinding (Renda et al. 2020)"
    rewinds = resumes_schedule = True

    def starting_network(self, origin, rewind):
        return origin.dense_at("final")
