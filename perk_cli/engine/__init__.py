"""The PERK method: functional inner loop, optimisers, learned step sizes, token weighting, outer step.

No I/O and no CLI here: tensors in, tensors out.
"""

from perk_cli.engine.batches import MetaTask, TokenBatch
from perk_cli.engine.inner_loop import InnerResult, run_inner_loop
from perk_cli.engine.meta import MetaLearner

__all__ = ["InnerResult", "MetaLearner", "MetaTask", "TokenBatch", "run_inner_loop"]
