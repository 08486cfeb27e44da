"""The kinds of job this service runs: one line each. A new kind is a package of its own
(its spec, service functions, task and `kind.py`), its table and migration, its router,
and a line here."""

from enum import StrEnum

from service.advice.kind import ADVICE
from service.comparisons.kind import COMPARE
from service.datasets.kind import IMPORT
from service.exports.kind import EXPORT
from service.jobs.kinds import KindRegistry
from service.predictions.kind import PREDICT
from service.searches.kind import SEARCH
from service.training.kind import TRAIN

KINDS = KindRegistry([TRAIN, ADVICE, EXPORT, PREDICT, IMPORT, COMPARE, SEARCH])

# The kinds as a request parameter takes them (GET /jobs?kind=…): an unknown one is a 422.
JobKindName = StrEnum("JobKindName", {name.upper(): name for name in KINDS.names})  # type: ignore[misc]

KINDS_DESCRIPTION = "; ".join(f'"{kind.name}": {kind.summary}' for kind in KINDS)
