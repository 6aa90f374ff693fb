"""Hardware-aware multi-objective search over a space's integer encoding (pymoo).

Vocabulary, top-down, one module each:

* :func:`search` (``run``) runs one :class:`SearchConfig` (``config``) into ``runs/<id>/``
  and returns a :class:`SearchResult` (``report``); the CLI is a thin layer over it.
* An :class:`Evaluator` (``evaluator``) turns candidate encodings into objective values:
  the cheap ones (``latency:<device>``, ``params``, ``macs``) for every candidate, the
  expensive one (``acc``) only for candidates that meet the budget, once per arch.
  Everything evaluated goes to an :class:`Archive` (``archive``, Parquet).
* The pymoo problem and its operators (``problem``) keep every candidate a valid arch.
* Algorithms by name (``algorithms``, one table): ``random``, ``nsga2``, ``nsga3``,
  ``moga`` (MoGA's weighted crowding) and ``nat`` (NAT's surrogate loop, ``surrogate``).

Budgets constrain one device's predicted latency (the largest budget); the best arch
under each budget is read from the archive afterwards, so several budgets cost one run.
A search counts *accuracy evaluations* (the expensive part): ``evaluations`` of them.
"""

from hwnas.search.algorithms import ALGORITHMS, make_algorithm, weighted_crowding
from hwnas.search.archive import Archive, archive_objectives, scored_rows
from hwnas.search.config import Objective, SearchConfig, SearchError, parse_objectives
from hwnas.search.evaluator import Evaluator, SupernetAccuracy
from hwnas.search.problem import ArchProblem
from hwnas.search.report import SearchResult, best_per_budget, hypervolume, non_dominated
from hwnas.search.run import prepare, search
from hwnas.search.surrogate import AccuracySurrogate

__all__ = ["ALGORITHMS", "AccuracySurrogate", "Archive", "ArchProblem", "Evaluator",
           "Objective", "SearchConfig", "SearchError", "SearchResult", "SupernetAccuracy",
           "archive_objectives", "best_per_budget", "hypervolume", "make_algorithm",
           "non_dominated", "parse_objectives", "prepare", "scored_rows", "search",
           "weighted_crowding"]
