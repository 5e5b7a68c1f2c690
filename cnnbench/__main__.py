"""`python -m cnnbench ...` (also what `torchrun -m cnnbench` runs)."""

from .cli import main

main()
