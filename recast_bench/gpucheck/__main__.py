import sys

from recast_bench.gpucheck.stack import main as check_stack

# One line naming what is missing, before torch or Hydra is imported (a bare CUDA image lacks Hydra).
if check_stack([]) != 0:
    sys.exit(2)

from recast_bench.gpucheck.runner import main  # noqa: E402

sys.exit(main())
