"""`comfy_execution.jobs` names over comfyd's executor/jobs.py."""
from executor.jobs import ALL_STATUSES, COMPLETED, FAILED, IN_PROGRESS, PENDING
from executor.jobs import find_job as get_job  # noqa: F401
from executor.jobs import from_history as normalize_history_item  # noqa: F401
from executor.jobs import from_queue_item as normalize_queue_item  # noqa: F401
from executor.jobs import is_previewable  # noqa: F401
from executor.jobs import list_jobs as get_all_jobs  # noqa: F401
from executor.jobs import outputs_summary as get_outputs_summary  # noqa: F401
from executor.jobs import sort_jobs as apply_sorting  # noqa: F401


class JobStatus:
    PENDING, IN_PROGRESS, COMPLETED, FAILED = PENDING, IN_PROGRESS, COMPLETED, FAILED
    ALL = list(ALL_STATUSES)
