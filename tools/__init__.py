"""Tools around a run: the memory planner (``python -m tools.memory``) and the cue scorer
(``python -m tools.score``)."""
