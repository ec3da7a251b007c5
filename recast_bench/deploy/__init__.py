"""Ship a learned task: export it for plain timm/torchvision, pack every task in one file, and predict."""

from recast_bench.deploy.run import LoadedRun, TaskInfo, load_run

__all__ = ["LoadedRun", "TaskInfo", "load_run"]
