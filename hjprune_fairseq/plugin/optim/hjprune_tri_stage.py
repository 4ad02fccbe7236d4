"""``hjprune_tri_stage``: fairseq's ``tri_stage`` learning-rate schedule, refusing a ``max_update`` too
small for its phases with one line that names the smallest value that works (compat quirk 8), where
fairseq fails with an assertion or a ZeroDivisionError."""

from fairseq.optim.lr_scheduler import register_lr_scheduler
from fairseq.optim.lr_scheduler.tri_stage_lr_scheduler import TriStageLRSchedule, TriStageLRScheduleConfig

from .. import compat


@register_lr_scheduler("hjprune_tri_stage", dataclass=TriStageLRScheduleConfig)
class HJPruneTriStageLRSchedule(TriStageLRSchedule):
    @compat.one_line_errors
    def __init__(self, cfg: TriStageLRScheduleConfig, optimizer):
        compat.check_tri_stage_steps(cfg.max_update, cfg.phase_ratio, cfg.warmup_steps, cfg.hold_steps, cfg.decay_steps)
        super().__init__(cfg, optimizer)
