"""The toy world: a tiny Qwen2.5-VL built locally, the synthetic shapes scenes and questions,
reasoning traces with flaws, and the supervised warm-ups that give SR-MCR a model to start from.

Nothing here is part of the method: it registers ``tiny:``, ``warm:`` and ``shapes:`` as sources
(``toyworld.sources``) so that the CPU default and the tests need no download.
"""
