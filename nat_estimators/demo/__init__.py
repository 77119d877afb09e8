"""Demo utilities shared by the examples, notebooks, validation suite and benchmarks.

Toy tasks with generated data, small causal models built in memory, rollouts and group
advantages. They are shipped so that ``nat-estimators validate`` and the examples run from an
installed package, but they are not part of the stable API: import the submodules explicitly.
"""
