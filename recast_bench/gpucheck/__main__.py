import sys

from recast_bench.gpucheck.runner import main

sys.exit(main())
