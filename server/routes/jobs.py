"""/api/jobs and /api/jobs/{id} (API.md §2.11): one view over running, pending and finished
prompts. Declared with the /api prefix, so the app also serves /api/api/jobs, and no /jobs."""
from __future__ import annotations

from aiohttp import web

from executor import jobs
from server.app_keys import QUEUE

routes = web.RouteTableDef()


def _err(message):
    return web.json_response({"error": message}, status=400)


@routes.get("/api/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    q = request.rel_url.query
    statuses = None
    if "status" in q:
        statuses = [s.strip().lower() for s in q["status"].split(",") if s.strip()]
        # Frontends from 1.38.4 also ask for "cancelled" (a status of later ComfyUI versions). 0.8.0's
        # jobs are never in it, so it is accepted and matches nothing, instead of a 400 that
        # empties those frontends' history panels.
        bad = [s for s in statuses if s not in jobs.ALL_STATUSES and s != "cancelled"]
        if bad:
            return _err(f"Invalid status value(s): {', '.join(bad)}. Valid values: {', '.join(jobs.ALL_STATUSES)}")
    sort_by = q.get("sort_by", "created_at").lower()
    if sort_by not in ("created_at", "execution_duration"):
        return _err("sort_by must be 'created_at' or 'execution_duration'")
    sort_order = q.get("sort_order", "desc").lower()
    if sort_order not in ("asc", "desc"):
        return _err("sort_order must be 'asc' or 'desc'")
    limit = None
    if "limit" in q:
        try:
            limit = int(q["limit"])
        except ValueError:
            return _err("limit must be an integer")
        if limit <= 0:
            return _err("limit must be a positive integer")
    offset = 0
    if "offset" in q:
        try:
            offset = max(int(q["offset"]), 0)
        except ValueError:
            return _err("offset must be an integer")
    queue = request.app[QUEUE]
    running, pending = queue.get_current_queue()
    history = queue.get_history(deep=False)  # only read: no copy of what may be 10,000 entries
    page, total = jobs.list_jobs(running, pending, history, statuses, q.get("workflow_id"), sort_by, sort_order,
                                 limit, offset)
    return web.json_response({"jobs": page, "pagination": {"offset": offset, "limit": limit, "total": total,
                                                           "has_more": offset + len(page) < total}})


@routes.get("/api/jobs/{job_id}")
async def get_job(request: web.Request) -> web.Response:
    queue = request.app[QUEUE]
    job_id = request.match_info["job_id"]
    running, pending = queue.get_current_queue()
    job = jobs.find_job(job_id, running, pending, queue.get_history(prompt_id=job_id, deep=False))
    if job is None:
        return web.json_response({"error": "Job not found"}, status=404)
    return web.json_response(job)
